#!/usr/bin/env bash
# What the sync crate (sync/, shmkv-sync) needs on a fresh machine: protoc to
# build etcd's protocol (any build of the workspace: clippy, tests), and etcd
# and etcdctl for its scenario tests. Installs the Debian packages that are
# absent (protobuf-compiler, etcd-server, etcd-client); nothing when all are
# there. Called by scripts/test.sh and, before clippy, by .ci/run.
set -euo pipefail
need_apt=()
command -v protoc >/dev/null || need_apt+=(protobuf-compiler)
command -v etcd >/dev/null || need_apt+=(etcd-server)
command -v etcdctl >/dev/null || need_apt+=(etcd-client)
if ((${#need_apt[@]})); then
    echo "sync deps: installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
