# Starting and stopping the cluster's background processes. Sourced.
# Each daemon gets a pid file and a log; starting one that runs is a no-op,
# which is what makes `up` idempotent.

daemon_pid() {
  local f="$PID_DIR/$1.pid" pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# start_daemon NAME CMD...: runs CMD in its own session, logging to
# $LOG_DIR/NAME.log.
start_daemon() {
  local name=$1
  shift
  if daemon_pid "$name" >/dev/null; then
    log "$name: already running"
    return 0
  fi
  mkdir -p "$LOG_DIR" "$PID_DIR"
  setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
  echo $! >"$PID_DIR/$name.pid"
  log "$name: started (pid $!, log $LOG_DIR/$name.log)"
}

# stop_daemon NAME: SIGTERM, then SIGKILL after a grace period; also kills
# the daemon's children (containerd shims are not among them: they re-parent
# by design and are stopped through their containers).
stop_daemon() {
  local name=$1 pid i
  pid=$(daemon_pid "$name") || { rm -f "$PID_DIR/$name.pid"; return 0; }
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PID_DIR/$name.pid"
  log "$name: stopped"
}

# Fails when the daemon died, with the end of its log, so a broken start
# says why instead of timing out later.
check_alive() {
  local name=$1
  if ! daemon_pid "$name" >/dev/null; then
    log "$name is not running; last lines of $LOG_DIR/$name.log:"
    tail -n 30 "$LOG_DIR/$name.log" >&2 || true
    return 1
  fi
}

# wait_daemon NAME TIMEOUT_S CMD...: like wait_for, but gives up at once if
# the daemon has exited.
wait_daemon() {
  local name=$1 timeout=$2 i
  shift 2
  for ((i = 0; i < timeout * 2; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    check_alive "$name" || return 1
    sleep 0.5
  done
  log "timed out after ${timeout}s waiting for $name; last lines of its log:"
  tail -n 30 "$LOG_DIR/$name.log" >&2 || true
  return 1
}
