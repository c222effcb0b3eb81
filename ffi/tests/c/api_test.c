/* The C API, used from C as a C program would: every function, its error
 * codes, zero-copy references outliving overwrites and compactions, write
 * callbacks that commit or abort, and a writer killed inside a callback.
 *
 * Built and run by scripts/test-ffi.sh: cc -Wall -Werror against
 * ffi/include/shmkv.h and libshmkv_ffi.so. Exits non-zero on the first failed
 * check; the map it made is destroyed by an atexit handler in any case. */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmkv.h"

static char NAME[64];
static int failures = 0;

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n",       \
                    __FILE__, __LINE__, #cond, shmkv_last_error());             \
            exit(1);                                                            \
        }                                                                       \
    } while (0)

#define S(str) (const uint8_t *)(str), strlen(str)

static void cleanup(void) {
    uint8_t removed = 0;
    shmkv_destroy_by_name(NAME, NULL, &removed);
}

static int32_t stage_two(ShmkvTxn *txn, void *ctx) {
    (void)ctx;
    CHECK(shmkv_txn_insert(txn, S("a"), S("batch-a")) == SHMKV_OK);
    /* The batch sees its own writes. */
    const uint8_t *v;
    size_t len;
    CHECK(shmkv_txn_get(txn, S("a"), &v, &len) == SHMKV_OK);
    CHECK(len == 7 && memcmp(v, "batch-a", 7) == 0);
    CHECK(shmkv_txn_insert(txn, S("b"), S("batch-b")) == SHMKV_OK);
    return 0;
}

static int32_t stage_then_abort(ShmkvTxn *txn, void *ctx) {
    (void)ctx;
    CHECK(shmkv_txn_insert(txn, S("a"), S("never")) == SHMKV_OK);
    CHECK(shmkv_txn_remove(txn, S("b")) == SHMKV_OK);
    return 7;
}

static int32_t stage_then_die(ShmkvTxn *txn, void *ctx) {
    (void)ctx;
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof k, "dead-%d", i);
        CHECK(shmkv_txn_insert(txn, S(k), S("x")) == SHMKV_OK);
    }
    kill(getpid(), SIGKILL);
    return 0;
}

static int32_t read_modify_write(ShmkvTxn *txn, void *ctx) {
    const uint8_t *v;
    size_t len;
    int32_t rc = shmkv_txn_get(txn, S("counter"), &v, &len);
    uint64_t n = 0;
    if (rc == SHMKV_OK) {
        CHECK(len == 8);
        memcpy(&n, v, 8);
    } else {
        CHECK(rc == SHMKV_MISSING);
    }
    n += *(uint64_t *)ctx;
    return shmkv_txn_insert(txn, S("counter"), (const uint8_t *)&n, 8) == SHMKV_OK ? 0 : 1;
}

int main(void) {
    snprintf(NAME, sizeof NAME, "ffi-c-test-%d", (int)getpid());
    atexit(cleanup);

    /* Sizes and options. */
    uint64_t bytes = 0;
    CHECK(shmkv_parse_size("64mb", &bytes) == SHMKV_OK && bytes == 64u << 20);
    CHECK(shmkv_parse_size("12 parsecs", &bytes) == SHMKV_E_INVALID);
    CHECK(strstr(shmkv_last_error(), "unit") != NULL);
    CHECK(shmkv_parse_size(NULL, &bytes) == SHMKV_E_INVALID);

    ShmkvOptions o;
    shmkv_options_init(&o);
    o.capacity = 64;
    o.arena_size = 64 << 10;
    o.mode = 0600;

    ShmkvMap *m = NULL;
    CHECK(shmkv_open(NAME, &o, 0, &m) == SHMKV_E_NOT_FOUND);
    CHECK(strstr(shmkv_last_error(), "not found") != NULL);
    CHECK(shmkv_open(NAME, &o, SHMKV_CREATE | SHMKV_EXCL, &m) == SHMKV_OK && m != NULL);
    ShmkvMap *again = NULL;
    CHECK(shmkv_open(NAME, &o, SHMKV_CREATE | SHMKV_EXCL, &again) == SHMKV_E_EXISTS);
    CHECK(shmkv_open(NAME, &o, SHMKV_EXCL, &again) == SHMKV_E_INVALID);
    CHECK(shmkv_open("", &o, SHMKV_CREATE, &again) == SHMKV_E_INVALID);
    ShmkvOptions bad = o;
    bad.mode = 644; /* decimal: not a mode */
    CHECK(shmkv_open(NAME, &bad, 0, &again) == SHMKV_E_INVALID);
    bad = o;
    bad.struct_size = 8; /* not initialised by shmkv_options_init */
    CHECK(shmkv_open(NAME, &bad, 0, &again) == SHMKV_E_INVALID);

    /* NULL arguments are errors, not crashes. */
    CHECK(shmkv_insert(NULL, S("k"), S("v")) == SHMKV_E_INVALID);
    CHECK(shmkv_insert(m, NULL, 3, S("v")) == SHMKV_E_INVALID);
    CHECK(shmkv_len(m, NULL) == SHMKV_E_INVALID);

    /* A map no `shmkv sync` mirrors has no sync state; its reserved key
     * cannot be written by users. */
    ShmkvSyncInfo info;
    CHECK(shmkv_sync_state(m, &info, NULL, 0) == SHMKV_MISSING);
    CHECK(shmkv_insert(m, (const uint8_t *)"\0shmkv:sync", 11, S("x")) == SHMKV_E_RESERVED_KEY);

    /* Insert, get (copy), get into a small buffer, contains, remove. */
    CHECK(shmkv_insert(m, S("greeting"), S("hello")) == SHMKV_OK);
    CHECK(shmkv_insert(m, S(""), S("empty key")) == SHMKV_OK);
    CHECK(shmkv_insert(m, S("nothing"), NULL, 0) == SHMKV_OK);
    char buf[64];
    size_t len = 0;
    CHECK(shmkv_get(m, S("greeting"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_OK);
    CHECK(len == 5 && memcmp(buf, "hello", 5) == 0);
    CHECK(shmkv_get(m, S("greeting"), (uint8_t *)buf, 2, &len) == SHMKV_E_BUFFER_TOO_SMALL && len == 5);
    CHECK(shmkv_get(m, S("greeting"), NULL, 0, &len) == SHMKV_E_BUFFER_TOO_SMALL && len == 5);
    CHECK(shmkv_get(m, S("nothing"), NULL, 0, &len) == SHMKV_OK && len == 0);
    CHECK(shmkv_get(m, S("absent"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_MISSING);
    CHECK(shmkv_contains(m, S("greeting")) == SHMKV_OK);
    CHECK(shmkv_contains(m, S("absent")) == SHMKV_MISSING);
    CHECK(shmkv_remove(m, S("nothing")) == SHMKV_OK);
    CHECK(shmkv_remove(m, S("nothing")) == SHMKV_MISSING);
    uint64_t n = 0, version = 0;
    CHECK(shmkv_len(m, &n) == SHMKV_OK && n == 2);
    CHECK(shmkv_version(m, &version) == SHMKV_OK && version == 4);

    /* The thread's copy buffer (for bindings where arguments cost). */
    {
        size_t cap = 0;
        int64_t got = shmkv_get_copy(m, S("greeting"));
        CHECK(got == 5);
        const uint8_t *cb = shmkv_copy_buffer(&cap);
        CHECK(cap >= 5 && memcmp(cb, "hello", 5) == 0);
        CHECK(shmkv_get_copy(m, S("absent")) == SHMKV_ABSENT);
        CHECK(shmkv_get_copy(NULL, S("greeting")) == SHMKV_E_INVALID);
        static uint8_t big[200000];
        memset(big, 'b', sizeof big);
        CHECK(shmkv_insert(m, S("big"), big, sizeof big) == SHMKV_OK);
        CHECK(shmkv_get_copy(m, S("big")) == (int64_t)sizeof big);
        cb = shmkv_copy_buffer(&cap); /* it grew: ask again */
        CHECK(cap >= sizeof big && memcmp(cb, big, sizeof big) == 0);
        CHECK(shmkv_copy_buffer(NULL) == cb);
        CHECK(shmkv_remove(m, S("big")) == SHMKV_OK);
    }

    /* Oversized key: a typed error, nothing stored lost. */
    static uint8_t big_key[1 << 17];
    CHECK(shmkv_insert(m, big_key, sizeof big_key, S("v")) == SHMKV_E_KEY_TOO_LARGE);
    CHECK(shmkv_len(m, &n) == SHMKV_OK && n == 2);

    /* A zero-copy reference outlives overwrites, growth and compaction. */
    ShmkvRef *r = NULL;
    const uint8_t *p = NULL;
    CHECK(shmkv_get_ref(m, S("greeting"), &r, &p, &len) == SHMKV_OK && len == 5);
    CHECK(((uintptr_t)p % 16) == 0);
    for (int i = 0; i < 2000; i++) {
        char k[32], v[64];
        snprintf(k, sizeof k, "fill-%d", i);
        snprintf(v, sizeof v, "value-%d-with-some-padding-to-fill-the-arena", i);
        CHECK(shmkv_insert(m, S(k), S(v)) == SHMKV_OK);
        CHECK(shmkv_insert(m, S("greeting"), S(v)) == SHMKV_OK);
    }
    CHECK(shmkv_compact(m) == SHMKV_OK);
    CHECK(memcmp(p, "hello", 5) == 0);
    ShmkvRef *missing_ref = (ShmkvRef *)1;
    CHECK(shmkv_get_ref(m, S("absent"), &missing_ref, &p, &len) == SHMKV_MISSING);
    CHECK(missing_ref == (ShmkvRef *)1); /* untouched */
    char *json = NULL;
    CHECK(shmkv_stats_json(m, &json) == SHMKV_OK);
    CHECK(strstr(json, "\"generation\":1,") == NULL); /* it grew */
    CHECK(strstr(json, NAME) != NULL);
    shmkv_string_free(json);
    shmkv_ref_release(r);

    /* Write callbacks: commit, abort, read-modify-write. */
    CHECK(shmkv_write(m, stage_two, NULL) == SHMKV_OK);
    CHECK(shmkv_get(m, S("b"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_OK && len == 7);
    CHECK(shmkv_version(m, &version) == SHMKV_OK);
    CHECK(shmkv_write(m, stage_then_abort, NULL) == SHMKV_E_ABORTED);
    uint64_t after = 0;
    CHECK(shmkv_version(m, &after) == SHMKV_OK && after == version);
    CHECK(shmkv_get(m, S("a"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_OK);
    CHECK(len == 7 && memcmp(buf, "batch-a", 7) == 0);
    CHECK(shmkv_contains(m, S("b")) == SHMKV_OK);
    CHECK(shmkv_write(m, NULL, NULL) == SHMKV_E_INVALID);
    for (uint64_t i = 1; i <= 10; i++) CHECK(shmkv_write(m, read_modify_write, &i) == SHMKV_OK);
    uint64_t counter = 0;
    CHECK(shmkv_get(m, S("counter"), (uint8_t *)&counter, 8, &len) == SHMKV_OK && counter == 55);

    const uint8_t *bv = NULL;
    pid_t bchild;
    int bstatus = 0;
    uint64_t bn2 = 0;
    /* Batches held open across calls: begin ... commit / abort, and a batch
     * aborted by closing its handle. */
    {
        ShmkvMap *h = NULL, *other = NULL;
        CHECK(shmkv_open(NAME, &o, 0, &h) == SHMKV_OK);
        CHECK(shmkv_open(NAME, &o, 0, &other) == SHMKV_OK);
        CHECK(shmkv_version(other, &version) == SHMKV_OK);
        ShmkvBatch *b = NULL;
        CHECK(shmkv_batch_begin(h, &b) == SHMKV_OK && b != NULL);
        CHECK(shmkv_batch_insert(b, S("tx-1"), S("one")) == SHMKV_OK);
        CHECK(shmkv_batch_insert(b, S("tx-2"), S("two")) == SHMKV_OK);
        CHECK(shmkv_batch_get(b, S("tx-1"), &bv, &len) == SHMKV_OK && len == 3 && memcmp(bv, "one", 3) == 0);
        CHECK(shmkv_batch_remove(b, S("tx-2")) == SHMKV_OK);
        CHECK(shmkv_batch_remove(b, S("tx-2")) == SHMKV_MISSING);
        CHECK(shmkv_batch_get(b, S("tx-2"), &bv, &len) == SHMKV_MISSING);
        /* Nothing visible before the commit; a second write on this thread
         * is refused instead of deadlocking. */
        CHECK(shmkv_contains(other, S("tx-1")) == SHMKV_MISSING);
        CHECK(shmkv_insert(h, S("x"), S("y")) == SHMKV_E_NESTED_WRITE);
        CHECK(shmkv_batch_commit(b) == SHMKV_OK);
        CHECK(shmkv_version(other, &after) == SHMKV_OK && after == version + 1);
        CHECK(shmkv_get(other, S("tx-1"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_OK && len == 3);
        CHECK(shmkv_contains(other, S("tx-2")) == SHMKV_MISSING);

        CHECK(shmkv_batch_begin(h, &b) == SHMKV_OK);
        CHECK(shmkv_batch_insert(b, S("tx-1"), S("aborted")) == SHMKV_OK);
        shmkv_batch_abort(b);
        shmkv_batch_abort(NULL);
        CHECK(shmkv_get(other, S("tx-1"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_OK);
        CHECK(len == 3 && memcmp(buf, "one", 3) == 0);

        CHECK(shmkv_batch_begin(h, &b) == SHMKV_OK);
        CHECK(shmkv_batch_insert(b, S("tx-3"), S("never")) == SHMKV_OK);
        shmkv_close(h); /* aborts the open batch and releases the lock */
        CHECK(shmkv_contains(other, S("tx-3")) == SHMKV_MISSING);
        CHECK(shmkv_version(other, &after) == SHMKV_OK && after == version + 1);
        CHECK(shmkv_insert(other, S("tx-4"), S("lock free")) == SHMKV_OK);
        CHECK(shmkv_batch_commit(NULL) == SHMKV_E_INVALID);
        CHECK(shmkv_batch_begin(NULL, &b) == SHMKV_E_INVALID);
        shmkv_close(other);
    }

    /* A process killed with a batch open: nothing of it, lock recovered. */
    CHECK(shmkv_len(m, &n) == SHMKV_OK);
    bchild = fork();
    CHECK(bchild >= 0);
    if (bchild == 0) {
        ShmkvBatch *b = NULL;
        if (shmkv_batch_begin(m, &b) != SHMKV_OK) _exit(2);
        for (int i = 0; i < 50; i++) {
            char k[16];
            snprintf(k, sizeof k, "open-%d", i);
            if (shmkv_batch_insert(b, S(k), S("x")) != SHMKV_OK) _exit(2);
        }
        kill(getpid(), SIGKILL);
        _exit(3);
    }
    CHECK(waitpid(bchild, &bstatus, 0) == bchild && WIFSIGNALED(bstatus) && WTERMSIG(bstatus) == SIGKILL);
    CHECK(shmkv_contains(m, S("open-0")) == SHMKV_MISSING);
    CHECK(shmkv_insert(m, S("after-open-batch"), S("ok")) == SHMKV_OK);
    CHECK(shmkv_len(m, &bn2) == SHMKV_OK && bn2 == n + 1);

    /* Snapshot: every entry, consistent. */
    ShmkvSnapshot *s = NULL;
    uint64_t count = 0;
    CHECK(shmkv_len(m, &n) == SHMKV_OK);
    CHECK(shmkv_snapshot(m, &s, &count) == SHMKV_OK && count == n);
    int seen_greeting = 0;
    for (uint64_t i = 0; i < count; i++) {
        const uint8_t *k, *v;
        size_t kl, vl;
        CHECK(shmkv_snapshot_entry(s, i, &k, &kl, &v, &vl) == SHMKV_OK);
        if (kl == 8 && memcmp(k, "greeting", 8) == 0) seen_greeting = 1;
    }
    CHECK(seen_greeting);
    const uint8_t *k, *v;
    size_t kl, vl;
    CHECK(shmkv_snapshot_entry(s, count, &k, &kl, &v, &vl) == SHMKV_E_INVALID);
    shmkv_snapshot_free(s);

    /* Waiting: a timeout, then a change made by a child process. */
    CHECK(shmkv_version(m, &version) == SHMKV_OK);
    CHECK(shmkv_wait_for_change(m, version, 20, &after) == SHMKV_TIMEOUT);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        usleep(50 * 1000);
        _exit(shmkv_insert(m, S("from-child"), S("1")) == SHMKV_OK ? 0 : 1);
    }
    CHECK(shmkv_wait_for_change(m, version, 5000, &after) == SHMKV_OK && after > version);
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* A writer killed inside its callback: none of its batch, map intact. */
    CHECK(shmkv_len(m, &n) == SHMKV_OK);
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        shmkv_write(m, stage_then_die, NULL);
        _exit(3);
    }
    CHECK(waitpid(child, &status, 0) == child && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    CHECK(shmkv_contains(m, S("dead-0")) == SHMKV_MISSING);
    CHECK(shmkv_insert(m, S("after-crash"), S("ok")) == SHMKV_OK); /* lock recovered */
    uint64_t n2 = 0;
    CHECK(shmkv_len(m, &n2) == SHMKV_OK && n2 == n + 1);
    CHECK(shmkv_verify(m) == SHMKV_OK);

    /* Read-only handles refuse writes. */
    ShmkvOptions ro = o;
    ro.read_only = 1;
    ShmkvMap *reader = NULL;
    CHECK(shmkv_open(NAME, &ro, 0, &reader) == SHMKV_OK);
    CHECK(shmkv_get(reader, S("after-crash"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_OK);
    CHECK(shmkv_insert(reader, S("x"), S("y")) == SHMKV_E_READ_ONLY);

    /* Destroy: other handles see NOT_FOUND. References taken before keep
     * their bytes, also one whose handle was closed first. */
    CHECK(shmkv_get_ref(reader, S("after-crash"), &r, &p, &len) == SHMKV_OK);
    ShmkvMap *reader2 = NULL;
    CHECK(shmkv_open(NAME, &ro, 0, &reader2) == SHMKV_OK);
    ShmkvRef *r2 = NULL;
    const uint8_t *p2 = NULL;
    size_t len2 = 0;
    CHECK(shmkv_get_ref(reader2, S("a"), &r2, &p2, &len2) == SHMKV_OK);
    shmkv_close(reader2);
    CHECK(shmkv_destroy(m) == SHMKV_OK);
    CHECK(shmkv_get(reader, S("after-crash"), (uint8_t *)buf, sizeof buf, &len) == SHMKV_E_NOT_FOUND);
    CHECK(len == 2 && memcmp(p, "ok", 2) == 0);
    CHECK(len2 == 7 && memcmp(p2, "batch-a", 7) == 0);
    shmkv_ref_release(r2);
    shmkv_ref_release(r);
    shmkv_close(reader);
    shmkv_close(NULL);
    shmkv_ref_release(NULL);
    shmkv_snapshot_free(NULL);
    shmkv_string_free(NULL);
    CHECK(shmkv_open(NAME, &o, 0, &m) == SHMKV_E_NOT_FOUND);

    printf("c api test: all checks passed (%s, library %s)\n", NAME, shmkv_library_version());
    return failures;
}
