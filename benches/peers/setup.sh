#!/usr/bin/env bash
# Builds the peer candidates of the end-to-end benchmark (benches/e2e.rs):
#   java   benches/peers/java (Maven, from Maven Central): a plain KafkaConsumer ->
#          KafkaProducer passthrough and a Kafka Streams enrich; classes and jars in
#          $BENCH_PEERS_DIR/java/{classes,lib}
#   quix   a virtualenv with Quix Streams from PyPI in $BENCH_PEERS_DIR/venv
# Idempotent: a part whose inputs did not change is not rebuilt. Not part of
# `make test` or CI; `make bench-peers` runs it.
#
#   BENCH_PEERS_DIR  output dir (default <repo>/target/bench-peers)
#   MVN, PYTHON      maven and the interpreter for the venv (default mvn, python3.11 or python3)
#   usage: benches/peers/setup.sh [java] [quix]   (both by default)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
repo=$(cd "$here/../.." && pwd -P)
out=${BENCH_PEERS_DIR:-$repo/target/bench-peers}
MVN=${MVN:-mvn}
QUIXSTREAMS_VERSION=3.28.1

log() { printf 'bench-peers: %s\n' "$*" >&2; }

# Hash of what decides a build.
stamp() { cat "$@" | sha256sum | cut -d' ' -f1; }

build_java() {
  local pom=$here/java/pom.xml dest=$out/java want
  command -v java >/dev/null || { log "java: skipped (no java on PATH; need Java 17+)"; return 1; }
  want=$(stamp "$pom" $(find "$here/java/src" -type f | sort))
  if [[ -f "$dest/.stamp" && "$(<"$dest/.stamp")" == "$want" ]]; then
    log "java: up to date ($dest)"
    return 0
  fi
  command -v "$MVN" >/dev/null || { log "java: skipped (maven '$MVN' not found: apt-get install -y maven)"; return 1; }
  mkdir -p "$dest"
  log "java: building $pom (Maven Central) ..."
  if ! "$MVN" -B -q -Dstyle.color=never -f "$pom" -Dbench.out="$dest" \
      compile org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$dest/lib" >"$dest/build.log" 2>&1; then
    tail -n 40 "$dest/build.log" >&2
    log "java: maven failed (full output: $dest/build.log)"
    return 1
  fi
  echo "$want" >"$dest/.stamp"
  log "java: built ($(find "$dest/lib" -name '*.jar' | wc -l) jars)"
}

build_quix() {
  local venv=$out/venv py want
  want="quixstreams==$QUIXSTREAMS_VERSION"
  if [[ -x "$venv/bin/python" && -f "$venv/.stamp" && "$(<"$venv/.stamp")" == "$want" ]]; then
    log "quix: up to date ($venv)"
    return 0
  fi
  if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
  elif command -v python3.11 >/dev/null; then py=python3.11
  elif command -v python3 >/dev/null; then py=python3
  else log "quix: skipped (no python3)"; return 1; fi
  mkdir -p "$out"
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv" >&2 ||
    { log "quix: '$py -m venv' failed (apt-get install python3-venv)"; return 1; }
  log "quix: installing $want into $venv ..."
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "$want" >&2 ||
    { log "quix: pip install failed"; return 1; }
  "$venv/bin/python" -c 'import quixstreams' || { log "quix: quixstreams does not import"; return 1; }
  echo "$want" >"$venv/.stamp"
  log "quix: ready ($venv)"
}

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(java quix)
rc=0
for p in "${parts[@]}"; do
  case "$p" in
    java) build_java || rc=1 ;;
    quix) build_quix || rc=1 ;;
    *) log "unknown part '$p' (java, quix)"; exit 2 ;;
  esac
done
exit $rc
