#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft, broker+controller in one JVM)
# on 127.0.0.1, for tests. Jars come from Maven Central only (through
# scripts/kafka/pom.xml and `mvn dependency:copy-dependencies`); nothing is
# downloaded from anywhere else.
#
# Usage: scripts/kafka.sh COMMAND [ARGS]
#   install                     fetch the jars into $KAFKA_HOME_DIR/libs (no-op when complete)
#   start                       install if needed, format storage if needed, start, wait until ready
#                               (a broker not ready within $KAFKA_START_TIMEOUT s is stopped again)
#   stop                        SIGTERM, wait, SIGKILL after $KAFKA_STOP_TIMEOUT s; exit 0 if not running
#   status                      exit 0 if running and ready, non-zero otherwise
#   restart                     stop + start
#   reset                       stop and delete the data dir (keeps the jars)
#   bootstrap                   print the bootstrap address (127.0.0.1:$KAFKA_PORT)
#   topics-create NAME [PARTS]  create a topic if it does not exist (PARTS default 4)
#   topics-delete NAME          delete a topic if it exists
#   topics-list                 list topics
#   produce TOPIC               send stdin lines as records (key:value if KEY_SEP=: is given)
#   consume TOPIC [N] [MS]      print N records (default 1) from the beginning, wait at most MS ms
#   run-class CLASS [ARGS...]   run any main class on the Kafka classpath (tools logging config)
#   logs [N]                    print the last N (default 50) lines of the broker log
#
# Environment:
#   KAFKA_HOME_DIR          cache dir for jars and data (default: <repo>/.kafka)
#   KAFKA_DATA_DIR          data dir (default: $KAFKA_HOME_DIR/data)
#   KAFKA_PORT              PLAINTEXT listener port (default 9092)
#   KAFKA_CONTROLLER_PORT   CONTROLLER listener port (default KAFKA_PORT+1)
#   KAFKA_HEAP              broker heap flags (default "-Xmx512m -Xms256m")
#   KAFKA_JIT_OPTS          broker JIT flags (default "-XX:TieredStopAtLevel=1": C1 only, starts
#                           ~40% faster on 2 busy cores; set it to "" for the full C2 JIT)
#   KAFKA_JVM_OPTS          extra broker JVM flags
#   KAFKA_EXTRA_PROPERTIES  extra server.properties lines (newline separated), appended last
#   KAFKA_START_TIMEOUT     seconds to wait for readiness (default 90)
#   KAFKA_STOP_TIMEOUT      seconds to wait after SIGTERM before SIGKILL (default 30)
#   KAFKA_READY_ADMIN_CHECK 1: start also waits for an admin-client topic listing (adds ~3 s)
#   JAVA_HOME / JAVA        Java 17+ to use (default: java on PATH)
#   MVN                     maven binary (default: mvn on PATH)
#   KAFKA_MVN_ARGS          extra maven arguments for install (e.g. -Dmaven.repo.local=DIR)
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd "$SCRIPT_DIR/.." && pwd -P)
SRC_DIR=$SCRIPT_DIR/kafka
POM=$SRC_DIR/pom.xml

KAFKA_HOME_DIR=${KAFKA_HOME_DIR:-$REPO/.kafka}
LIBS=$KAFKA_HOME_DIR/libs
MARKER=$LIBS/.install-complete
DATA=${KAFKA_DATA_DIR:-$KAFKA_HOME_DIR/data}
LOG_DIR=$DATA/logs
PROPS=$DATA/server.properties
PID_FILE=$DATA/kafka.pid
OUT_FILE=$LOG_DIR/kafka.out
SERVER_LOG=$LOG_DIR/server.log

HOST=127.0.0.1
PORT_FROM_ENV=${KAFKA_PORT:+1}
KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
BOOTSTRAP=$HOST:$KAFKA_PORT
KAFKA_HEAP=${KAFKA_HEAP:--Xmx512m -Xms256m}
KAFKA_JIT_OPTS=${KAFKA_JIT_OPTS--XX:TieredStopAtLevel=1}
KAFKA_JVM_OPTS=${KAFKA_JVM_OPTS:-}
KAFKA_EXTRA_PROPERTIES=${KAFKA_EXTRA_PROPERTIES:-}
KAFKA_START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
KAFKA_STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}
MVN=${MVN:-mvn}
KAFKA_MVN_ARGS=${KAFKA_MVN_ARGS:-}
MDEP_VERSION=3.8.1 # maven-dependency-plugin
if [[ -z "${JAVA:-}" ]]; then
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA=$JAVA_HOME/bin/java; else JAVA=java; fi
fi

# The log line KafkaRaftServer prints once the broker is unfenced and serving.
READY_LINE='Kafka Server started'

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites

require_java() {
  command -v "$JAVA" >/dev/null 2>&1 ||
    die "java not found (need Java 17+; install e.g. 'apt-get install -y openjdk-17-jre-headless' or set JAVA_HOME)"
  local ver major
  ver=$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)
  major=${ver%%.*}
  [[ "$major" =~ ^[0-9]+$ ]] || die "cannot parse the Java version from '$JAVA -version' (got '$ver')"
  ((major >= 17)) || die "Java $ver found at $(command -v "$JAVA"); Kafka 4.x needs Java 17+ (set JAVA_HOME)"
}

require_mvn() {
  command -v "$MVN" >/dev/null 2>&1 ||
    die "maven ('$MVN') not found; it is needed once to fetch the Kafka jars from Maven Central (apt-get install -y maven)"
}

# Hash of what decides the jar set: a changed pom triggers a reinstall.
pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

jar_count() { find "$LIBS" -maxdepth 1 -name '*.jar' 2>/dev/null | wc -l; }

installed() {
  [[ -f "$MARKER" ]] || return 1
  local want_hash want_count
  want_hash=$(sed -n 's/^pom_sha256=//p' "$MARKER")
  want_count=$(sed -n 's/^jars=//p' "$MARKER")
  [[ "$want_hash" == "$(pom_hash)" && -n "$want_count" && "$want_count" == "$(jar_count)" ]]
}

cmd_install() {
  require_java
  installed && return 0
  mkdir -p "$KAFKA_HOME_DIR"
  # Serialise concurrent installs (e.g. parallel test jobs).
  exec 8>"$KAFKA_HOME_DIR/.install.lock"
  flock -w 900 8 || die "timed out waiting for another install (lock $KAFKA_HOME_DIR/.install.lock)"
  if installed; then exec 8>&-; return 0; fi
  require_mvn

  local version tmp mvn_log start
  version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")
  tmp=$KAFKA_HOME_DIR/libs.tmp.$$
  mvn_log=$KAFKA_HOME_DIR/install.log
  rm -rf "$tmp"
  start=$SECONDS
  log "installing Kafka $version jars from Maven Central into $LIBS ..."
  # shellcheck disable=SC2086 # KAFKA_MVN_ARGS is a flag list
  if ! "$MVN" -B -q -Dstyle.color=never $KAFKA_MVN_ARGS -f "$POM" \
      "org.apache.maven.plugins:maven-dependency-plugin:$MDEP_VERSION:copy-dependencies" \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    rm -rf "$tmp"
    {
      echo "---- last 40 lines of $mvn_log ----"
      tail -n 40 "$mvn_log"
      echo "----"
    } >&2
    die "maven could not resolve the Kafka jars (full output: $mvn_log)"
  fi
  [[ -f "$tmp/kafka_2.13-$version.jar" ]] || die "maven finished but kafka_2.13-$version.jar is missing from $tmp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  printf 'kafka_version=%s\npom_sha256=%s\njars=%s\n' "$version" "$(pom_hash)" "$(jar_count)" >"$MARKER"
  exec 8>&-
  log "installed $(jar_count) jars ($(du -sh "$LIBS" | cut -f1)) in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------- java runners

# Run a Kafka CLI class (quiet logging on stderr, fast-starting JVM flags).
run_tool() {
  "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$SRC_DIR/log4j2-tools.properties" \
    -cp "$LIBS/*" "$@"
}

# ---------------------------------------------------------------- process state

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

is_broker_pid() {
  local pid=$1
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # Guard against pid reuse: it must be our broker (kafka.Kafka with our properties file).
  tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $PROPS"
}

# Prints the pid of our broker if one is alive (pid file first, else a lookup
# of the process started with our exact server.properties path).
broker_pid() {
  local pid=""
  [[ -f "$PID_FILE" ]] && pid=$(<"$PID_FILE")
  if is_broker_pid "$pid"; then echo "$pid"; return 0; fi
  local f
  # One grep over all command lines (fast), then the exact check per candidate.
  while read -r f; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    if is_broker_pid "$pid"; then
      echo "$pid" >"$PID_FILE"
      echo "$pid"
      return 0
    fi
  done < <(grep -laF -- "$PROPS" /proc/[0-9]*/cmdline 2>/dev/null)
  return 1
}

# When our broker is running on another port than the default (it was started
# with KAFKA_PORT=...), later commands without KAFKA_PORT follow it; with an
# explicit, different KAFKA_PORT they fail.
adopt_running_port() {
  local p
  p=$(sed -n 's#^listeners=PLAINTEXT://[^:]*:\([0-9]*\),.*#\1#p' "$PROPS" 2>/dev/null) || true
  [[ -n "$p" && "$p" != "$KAFKA_PORT" ]] || return 0
  [[ -z "$PORT_FROM_ENV" ]] ||
    die "this script's broker is running on port $p, not KAFKA_PORT=$KAFKA_PORT; run '$0 stop' first"
  KAFKA_PORT=$p
  BOOTSTRAP=$HOST:$p
}

# Sends a Kafka ApiVersions v0 request (correlation id 42) and checks that the
# response carries that correlation id and error code 0: the broker is
# processing requests on the PLAINTEXT listener (a bare TCP connect is not
# enough: the listener socket is bound before request processing is enabled).
api_versions_ok() {
  local resp
  # shellcheck disable=SC2016 # expanded by the inner shell
  resp=$(timeout 5 bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
    printf "\x00\x00\x00\x12\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x08kafka.sh" >&3
    head -c 10 <&3' "$HOST" "$KAFKA_PORT" 2>/dev/null | od -An -tx1 | tr -d ' \n') || return 1
  [[ "${resp:8:12}" == "0000002a0000" ]]
}

# Running and ready: our process alive, it logged READY_LINE (printed once the
# controller is up and the broker is unfenced and serving), and it answers
# the Kafka protocol on the listener.
is_ready() {
  broker_pid >/dev/null || return 1
  adopt_running_port
  grep -qF "$READY_LINE" "$SERVER_LOG" 2>/dev/null || return 1
  api_versions_ok
}

# ---------------------------------------------------------------- config + storage

write_properties() {
  mkdir -p "$DATA" "$LOG_DIR"
  cat >"$PROPS.tmp" <<EOF
# Written by scripts/kafka.sh at each start; edits are overwritten.
# Use KAFKA_EXTRA_PROPERTIES to add or override settings.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA/kraft-logs

num.network.threads=2
num.io.threads=4
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
log.segment.bytes=67108864
EOF
  if [[ -n "$KAFKA_EXTRA_PROPERTIES" ]]; then
    printf '\n# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$PROPS.tmp"
  fi
  mv "$PROPS.tmp" "$PROPS"
}

# A random Kafka cluster id: 16 random bytes, url-safe base64 without padding
# (what `kafka-storage.sh random-uuid` prints), not starting with '-'.
new_cluster_id() {
  local id
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} -eq 22 && "$id" != -* ]] && { echo "$id"; return; }
  done
}

format_storage() {
  [[ -f "$DATA/kraft-logs/meta.properties" ]] && return 0
  local cid out
  cid=$(new_cluster_id)
  log "formatting storage in $DATA/kraft-logs (cluster id $cid)"
  if ! out=$(run_tool kafka.tools.StorageTool format -t "$cid" -c "$PROPS" 2>&1); then
    printf '%s\n' "$out" >&2
    die "formatting the storage failed"
  fi
}

# ---------------------------------------------------------------- commands

lock_data() {
  mkdir -p "$DATA"
  exec 9>"$DATA/.lock"
  flock -w $((KAFKA_START_TIMEOUT + KAFKA_STOP_TIMEOUT + 30)) 9 ||
    die "timed out waiting for another kafka.sh start/stop (lock $DATA/.lock)"
}

# SIGTERM (controlled shutdown), then SIGKILL after KAFKA_STOP_TIMEOUT seconds.
terminate() {
  local pid=$1 deadline=$((SECONDS + KAFKA_STOP_TIMEOUT))
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    log "broker pid $pid still alive after ${KAFKA_STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PID_FILE"
}

# Startup failed: show the logs, stop the broker if it is still up, exit 1.
fail_start() {
  local pid=${FAILED_PID:-}
  {
    echo "---- last 30 lines of $SERVER_LOG ----"
    tail -n 30 "$SERVER_LOG" 2>/dev/null || true
    echo "---- last 20 lines of $OUT_FILE ----"
    tail -n 20 "$OUT_FILE" 2>/dev/null || true
    echo "----"
  } >&2
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    log "stopping the broker that did not become ready (pid $pid)"
    terminate "$pid"
  fi
  die "$*"
}

wait_ready() {
  local pid=$1 deadline=$((SECONDS + KAFKA_START_TIMEOUT)) out
  FAILED_PID=$pid
  while :; do
    kill -0 "$pid" 2>/dev/null || fail_start "broker process $pid exited during startup"
    if grep -qF "$READY_LINE" "$SERVER_LOG" 2>/dev/null && api_versions_ok; then break; fi
    ((SECONDS < deadline)) || fail_start "broker not ready after ${KAFKA_START_TIMEOUT}s (see $SERVER_LOG)"
    sleep 0.3
  done
  # Optional extra check: a metadata round trip through the admin client (~3 s of JVM start).
  [[ "${KAFKA_READY_ADMIN_CHECK:-0}" == 1 ]] || return 0
  while ! out=$(run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list 2>&1); do
    kill -0 "$pid" 2>/dev/null || fail_start "broker process $pid exited during startup"
    ((SECONDS < deadline)) || { printf '%s\n' "$out" >&2; fail_start "broker does not answer admin requests after ${KAFKA_START_TIMEOUT}s"; }
    sleep 1
  done
}

cmd_start() {
  cmd_install
  lock_data
  local pid
  if pid=$(broker_pid); then
    adopt_running_port
    if is_ready; then
      log "already running (pid $pid)"
      echo "$BOOTSTRAP"
      return 0
    fi
    log "broker process $pid exists but is not ready yet; waiting"
    wait_ready "$pid"
    log "ready (pid $pid)"
    echo "$BOOTSTRAP"
    return 0
  fi
  port_open "$KAFKA_PORT" &&
    die "port $KAFKA_PORT on $HOST is in use by another process (not this script's broker); set KAFKA_PORT"
  port_open "$KAFKA_CONTROLLER_PORT" &&
    die "controller port $KAFKA_CONTROLLER_PORT on $HOST is in use by another process; set KAFKA_CONTROLLER_PORT"

  local start=$SECONDS
  write_properties
  format_storage
  rm -f "$SERVER_LOG" "$PID_FILE"
  : >"$OUT_FILE"
  # New session (no terminal signals), stdin closed, lock fds closed (else the
  # broker would hold the start/stop lock); the launcher writes its own pid and
  # execs java, so the pid file holds the JVM's pid.
  # shellcheck disable=SC2016,SC2086 # $$ is for the inner shell; KAFKA_HEAP / *_OPTS are flag lists
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" \
    "$JAVA" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOG_DIR" \
    -Dlog4j2.configurationFile="$SRC_DIR/log4j2-broker.properties" \
    $KAFKA_JIT_OPTS $KAFKA_JVM_OPTS \
    -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    </dev/null >>"$OUT_FILE" 2>&1 8>&- 9>&- &
  # wait for the pid file written by the launcher
  for _ in $(seq 100); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
  [[ -s "$PID_FILE" ]] || fail_start "the broker launcher did not write $PID_FILE"
  pid=$(<"$PID_FILE")
  log "started broker (pid $pid), waiting up to ${KAFKA_START_TIMEOUT}s for it to be ready ..."
  wait_ready "$pid"
  log "ready in $((SECONDS - start)) s; log: $SERVER_LOG"
  echo "$BOOTSTRAP"
}

cmd_stop() {
  lock_data
  local pid
  if ! pid=$(broker_pid); then
    rm -f "$PID_FILE"
    log "not running"
    return 0
  fi
  log "stopping broker (pid $pid) ..."
  terminate "$pid"
  log "stopped"
}

cmd_status() {
  local pid
  if ! pid=$(broker_pid); then
    echo "not running"
    return 1
  fi
  if is_ready; then
    echo "running and ready (pid $pid) on $BOOTSTRAP"
    return 0
  fi
  echo "running (pid $pid) but not ready"
  return 2
}

cmd_reset() {
  cmd_stop
  log "deleting $DATA"
  rm -rf "$DATA"
}

require_ready() {
  installed || die "Kafka is not installed; run: $0 install"
  is_ready || die "broker is not running/ready on $BOOTSTRAP; run: $0 start"
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; }

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case "$cmd" in
    install) cmd_install; log "installed in $LIBS ($(sed -n 's/^kafka_version=//p' "$MARKER"))" ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    bootstrap) if broker_pid >/dev/null; then adopt_running_port; fi; echo "$BOOTSTRAP" ;;
    topics-create)
      [[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 topics-create NAME [PARTITIONS]"
      require_ready
      run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --create --if-not-exists --topic "$1" --partitions "${2:-4}" --replication-factor 1
      ;;
    topics-delete)
      [[ $# -eq 1 ]] || die "usage: $0 topics-delete NAME"
      require_ready
      run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" \
        --delete --if-exists --topic "$1"
      ;;
    topics-list)
      require_ready
      run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" --list
      ;;
    produce)
      [[ $# -eq 1 ]] || die "usage: $0 produce TOPIC  (records on stdin, one per line; KEY_SEP=: for key:value)"
      require_ready
      local extra=()
      [[ -n "${KEY_SEP:-}" ]] && extra=(--property parse.key=true --property "key.separator=$KEY_SEP")
      run_tool org.apache.kafka.tools.ConsoleProducer --bootstrap-server "$BOOTSTRAP" \
        --topic "$1" "${extra[@]}"
      ;;
    consume)
      [[ $# -ge 1 && $# -le 3 ]] || die "usage: $0 consume TOPIC [MAX_MESSAGES] [TIMEOUT_MS]"
      require_ready
      run_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$BOOTSTRAP" \
        --topic "$1" --from-beginning --max-messages "${2:-1}" --timeout-ms "${3:-30000}" \
        --property print.key=true --property key.separator=:
      ;;
    run-class)
      [[ $# -ge 1 ]] || die "usage: $0 run-class CLASS [ARGS...]"
      require_java
      installed || die "Kafka is not installed; run: $0 install"
      run_tool "$@"
      ;;
    logs) tail -n "${1:-50}" "$SERVER_LOG" ;;
    -h | --help | help) usage ;;
    "") usage; exit 2 ;;
    *) usage; die "unknown command '$cmd'" ;;
  esac
}

main "$@"
