#!/usr/bin/env bash
# A throwaway single-node Slurm cluster (munged, MariaDB, slurmdbd, slurmctld, slurmd) and an
# sshd on loopback, for the integration tests of clove's Slurm provider and its SSH mode.
#
#   scripts/cluster.sh install      # Debian 12 packages, only those missing; no service left on
#   scripts/cluster.sh start DIR    # everything under DIR; writes DIR/env; waits until usable
#   scripts/cluster.sh check DIR    # self-test of a started cluster (jobs, sacct, ssh, multiplexing)
#   scripts/cluster.sh stop DIR     # stops by the pids recorded under DIR; idempotent
#   scripts/cluster.sh sshd-stop DIR   # stops only sshd and its connections (tests of a lost host)
#   scripts/cluster.sh sshd-start DIR  # starts that sshd again; waits until it takes logins
#
# DIR is the caller's (e.g. a fresh temp dir): an absolute or relative path of at most 70
# characters (unix socket paths under it are limited) made of letters, digits and ._/+-. Every
# file the cluster writes goes under it: config (DIR/etc), state and spool (DIR/spool, DIR/mysql,
# DIR/munge), logs (DIR/log), pid files and sockets (DIR/run, DIR/munge), keys (DIR/ssh), job
# output of `check` (DIR/jobs). The one exception is /run/sshd, the privilege separation
# directory compiled into Debian's sshd, which must exist (empty, root-owned). `start` on a DIR
# of an earlier run first removes those subdirectories, but refuses while a process of it lives.
#
# `start` fails (non-zero, with the tails of the logs) if anything is not ready in time, and then
# stops what it had started; with CLUSTER_KEEP_ON_FAILURE=1 it leaves it running to look at. A
# `start` interrupted by a signal leaves its daemons running: `stop DIR` ends them.
#
# After `start`, `. DIR/env` (lines of the form `export KEY=VALUE`, values never need quoting):
#   SLURM_CONF               DIR/etc/slurm.conf: every Slurm command (sbatch, squeue, sacct,
#                            scancel, sinfo, sacctmgr, scontrol) reads it from this variable
#   CLUSTER_DIR              DIR itself
#   CLUSTER_NAME             Slurm's ClusterName (what sacct -M / sacctmgr show)
#   CLUSTER_PARTITION        the one partition (Default=YES, no time limit, the one node)
#   CLUSTER_NODE             the one node: this host's short hostname, with its real CPUs/memory
#   CLUSTER_CPUS, CLUSTER_MEMORY_MB   what that node offers to jobs
#   CLUSTER_MUNGE_SOCKET     munged's socket (Slurm finds it through AuthInfo in its config files;
#                            only the munge/unmunge tools would need it, with --socket)
#   CLUSTER_SSH_HOST, CLUSTER_SSH_PORT, CLUSTER_SSH_USER   127.0.0.1, 2222, root
#   CLUSTER_SSH_KEY          private key (no passphrase) that sshd accepts for root
#   CLUSTER_SSH_KNOWN_HOSTS  known_hosts holding the throwaway host key, for
#                            -o UserKnownHostsFile=... -o StrictHostKeyChecking=yes
#
# How the ssh side finds the cluster: sshd's own config (DIR/ssh/sshd_config) has
# `SetEnv SLURM_CONF=DIR/etc/slurm.conf`, so every session it starts (a command or a shell) has
# SLURM_CONF set and a bare `ssh ... root@127.0.0.1 sbatch ...` (or squeue/sacct/scancel) works with
# no extra flags and nothing sent by the client. SetEnv in sshd_config overrides what a client
# might send; ~/.ssh/environment is not used (it would be shared by every cluster on the machine).
#
# Ports (fixed, unusual, all checked to be free before anything starts; `start` fails if not):
#   16817 slurmctld, 16818 slurmd, 16819 slurmdbd, 16820 MariaDB (bound to 127.0.0.1),
#   2222 sshd (bound to 127.0.0.1). slurmctld, slurmd and slurmdbd listen on all addresses of
#   this host; every client here reaches them through 127.0.0.1 (NodeAddr, SlurmctldHost's
#   address, AccountingStorageHost). Only one cluster can run on a machine at a time: a second
#   `start` fails on the ports (and the node is this host's name in either).
#
# Why things are as they are:
# - No systemd or init system runs here (PID 1 is the VM's own agent), and tests must not depend
#   on one: every daemon is started directly, in the foreground (-D/-F), detached with setsid, its
#   stdout/stderr in DIR/log (so it never holds the caller's pipes open), and its pid recorded as
#   DIR/pids/NAME. `stop` kills exactly those pids (after checking each still is a process of this
#   DIR), their descendants (sshd's per-connection processes), and slurmstepd processes of jobs
#   (cancelling the cluster's jobs first when slurmctld still answers). Orphans are reaped by
#   PID 1, which here does so only every second or two: `stop` waits (at most 5 s) until their
#   pids are gone, so that afterwards `ps` shows nothing of the cluster, not even zombies.
# - Everything runs as root (SlurmUser=root): DIR belongs to root, and jobs are submitted as root,
#   which Slurm allows unless a partition sets DisableRootJobs.
# - No cgroups: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, so jobs run in a container
#   or VM without a delegated cgroup tree.
set -euo pipefail

CLUSTER_NAME=clove
PARTITION=debug
CTLD_PORT=16817
SLURMD_PORT=16818
DBD_PORT=16819
MYSQL_PORT=16820
SSH_PORT=2222
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server openssh-server)
# Services the packages above register with systemd and SysV init.
SERVICES=(munge mariadb slurmctld slurmd slurmdbd ssh)
# Names (comm) of the processes this script may start or leave behind.
DAEMONS='^(munged|mariadbd|mysqld|slurmdbd|slurmctld|slurmd|slurmstepd|sshd)$'

# During `check`, a failure also shows the tails of the Slurm logs.
CHECK_DIR=""
die() {
  echo "cluster: $*" >&2
  if [ -n "$CHECK_DIR" ]; then
    local f
    for f in "$CHECK_DIR"/log/{slurmctld,slurmd,slurmdbd,sshd}.log; do
      [ -s "$f" ] && { echo "----- tail of $f" >&2; tail -n 15 "$f" >&2; }
    done
  fi
  exit 1
}
log() { echo "cluster: $*" >&2; }

# ---------------------------------------------------------------------------------------------
# install

# Pids of all processes on this machine named like one of the DAEMONS (pgrep can't take a pattern
# that long).
daemon_pids() {
  ps -eo pid=,comm= | awk -v re="$DAEMONS" '$2 ~ re { print $1 }'
}

# Packages (from the list given) that dpkg does not show as installed.
missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

cmd_install() {
  [ "$(id -u)" = 0 ] || die "install must run as root"
  local missing
  missing=$(missing_packages "${PACKAGES[@]}")
  if [ -z "$missing" ]; then
    log "all packages already installed"
    return 0
  fi
  log "installing: ${missing//$'\n'/ }"
  # Debian's maintainer scripts start each service they install through invoke-rc.d, which asks
  # /usr/sbin/policy-rc.d first: exit status 101 means "action not allowed". Put such a policy in
  # place for the duration of the install (restoring whatever was there), so nothing starts.
  local policy=/usr/sbin/policy-rc.d saved=""
  if [ -e "$policy" ]; then
    saved=$(mktemp /usr/sbin/.policy-rc.d.cluster.XXXXXX)
    cp -p "$policy" "$saved"
  fi
  restore_policy() {
    if [ -n "$saved" ]; then mv -f "$saved" "$policy"; else rm -f "$policy"; fi
  }
  trap restore_policy EXIT
  printf '#!/bin/sh\n# written by clove scripts/cluster.sh install\nexit 101\n' > "$policy"
  chmod 755 "$policy"
  # Remember which daemons ran before, so that any started by the install can be told apart.
  local before
  before=$(daemon_pids)

  # The package lists may be empty on a fresh machine; --no-install-recommends skips ~60 plugin
  # -dev packages and Perl modules that none of this needs. The lock timeout waits for another
  # apt run on the same machine instead of failing at once.
  local apt=(apt-get -qq -o DPkg::Lock::Timeout=600)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" update
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends $missing
  restore_policy
  trap - EXIT

  # Whatever the policy did not prevent: stop daemons that the install started, by pid (new
  # since the install began, and not a cluster that `start` launched meanwhile).
  local pid
  for pid in $(daemon_pids); do
    grep -qx "$pid" <<<"$before" && continue
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^CLUSTER_DIR=' && continue
    if alive "$pid"; then
      log "stopping $(cat /proc/"$pid"/comm 2>/dev/null) (pid $pid) started by the install"
      kill_pids 10 "$pid"
    fi
  done
  # Postinst also enables the services for the next boot (systemd wants-links, SysV rc links).
  # This machine boots neither, but leave them disabled: the tests start their own copies.
  local svc
  for svc in "${SERVICES[@]}"; do
    if command -v systemctl >/dev/null; then
      systemctl disable --quiet "$svc" >/dev/null 2>&1 || true
    fi
    if [ -e "/etc/init.d/$svc" ] && command -v update-rc.d >/dev/null; then
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
  missing=$(missing_packages "${PACKAGES[@]}")
  [ -z "$missing" ] || die "still missing after install: $missing"
  log "installed"
}

# ---------------------------------------------------------------------------------------------
# process helpers

# True while pid is alive and not a zombie.
alive() {
  local state
  state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# True if process $1 belongs to the cluster in $2. Daemons that rewrite their process title
# (sshd, slurmstepd) overwrite part of /proc/PID/cmdline and environ, so any of these will do:
# DIR on the command line (every daemon gets a config or data path as an argument), the markers
# launch() puts in the environment (inherited by slurmstepd and sshd's re-executed children), or
# an open file under DIR (each daemon's log; slurmstepd keeps slurmd's log open).
belongs() {
  local pid=$1 dir=$2 fd
  tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/" && return 0
  tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
    grep -qxF -e "CLUSTER_DIR=$dir" -e "SLURM_CONF=$dir/etc/slurm.conf" && return 0
  for fd in /proc/"$pid"/fd/*; do
    [[ "$(readlink "$fd" 2>/dev/null)" == "$dir"/* ]] && return 0
  done
  return 1
}

# All descendants of the given pids (children first found, then theirs).
descendants() {
  ps -eo pid=,ppid= | awk -v roots="$*" '
    BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) want[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do {
        grew = 0
        for (p in parent) if (!(p in want) && (parent[p] in want)) { want[p] = 1; grew = 1; print p }
      } while (grew)
    }'
}

# kill_pids SECONDS PID...: SIGTERM, wait up to SECONDS for all to exit, then SIGKILL the rest.
kill_pids() {
  local secs=$1; shift
  [ $# -gt 0 ] || return 0
  local pid deadline=$((SECONDS + secs)) left
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  while :; do
    left=()
    for pid in "$@"; do alive "$pid" && left+=("$pid"); done
    [ ${#left[@]} -gt 0 ] || return 0
    [ $SECONDS -lt $deadline ] || break
    sleep 0.1
  done
  log "SIGKILL to ${left[*]} (still alive after ${secs}s)"
  for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  deadline=$((SECONDS + 5))
  for pid in "${left[@]}"; do
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  done
}

# Dead daemons were orphans, so PID 1 must reap them; this VM's PID 1 does so only every second
# or two, and until then the zombie's pid still answers kill -0. Give it a bounded moment, so
# that after `stop` no pid of the cluster exists at all.
wait_reaped() {
  local deadline=$((SECONDS + 5)) pid
  for pid in "$@"; do
    while [ -e "/proc/$pid" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  done
}

# The recorded pid of daemon $2 in DIR $1, if that process is alive and still belongs to DIR.
recorded_pid() {
  local f="$1/pids/$2" pid
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && belongs "$pid" "$1" && echo "$pid"
}

# Daemon-named processes on this machine that belong to DIR (catches what a pid file misses,
# e.g. slurmstepd, which slurmd double-forks away from itself).
stray_pids() {
  local dir=$1 pid comm
  for pid in $(ps -eo pid=); do
    [ "$pid" != $$ ] || continue
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    [[ "$comm" =~ $DAEMONS ]] || continue
    alive "$pid" && belongs "$pid" "$dir" && echo "$pid"
  done
  return 0
}

# ---------------------------------------------------------------------------------------------
# start

# Resolves DIR to an absolute path and rejects one that the config files can't carry (spaces,
# quotes) or that is too long for the unix sockets under it (108 bytes, ssh adds ~20 to a
# ControlPath while creating it).
resolve_dir() {
  [ -n "${1:-}" ] || die "usage: $0 start|stop|check DIR"
  [ -d "$1" ] || die "no such directory: $1"
  local d
  d=$(cd "$1" && pwd -P)
  [[ "$d" =~ ^/[A-Za-z0-9._/+-]+$ ]] || die "DIR must be a plain path (letters, digits, ._/+-): $d"
  [ ${#d} -le 70 ] || die "DIR path too long for the unix sockets under it (max 70): $d"
  echo "$d"
}

# True if something listens on TCP port $1 (any address, IPv4 or IPv6).
port_in_use() {
  local hex
  hex=$(printf '%04X' "$1")
  awk -v h="$hex" '$4 == "0A" { n = split($2, a, ":"); if (a[n] == h) found = 1 }
    END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# launch DIR NAME CMD...: starts CMD detached (own session, stdin from /dev/null, output to
# DIR/log/NAME.out) with the cluster marked in its environment, and records its pid. The subshell
# execs setsid, which execs CMD in the same process (a background child of a script is never a
# process group leader, so setsid needs no fork): $! is CMD's pid.
launch() {
  local dir=$1 name=$2; shift 2
  # From DIR, so no daemon (nor a job step, which inherits slurmd's cwd) holds the caller's
  # working directory.
  (cd "$dir" && CLUSTER_DIR="$dir" SLURM_CONF="$dir/etc/slurm.conf" exec setsid "$@" \
    </dev/null >>"$dir/log/$name.out" 2>&1) &
  echo $! >"$dir/pids/$name"
}

# wait_for SECONDS WHAT CMD...: runs CMD until it succeeds, for at most SECONDS.
wait_for() {
  local secs=$1 what=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
    sleep 0.2
  done
}

# Fails start with the log tails of every daemon, after stopping what was started (unless
# CLUSTER_KEEP_ON_FAILURE is set, to look at it).
start_failed() {
  local dir=$1 f
  log "start failed: $2"
  for f in "$dir"/log/*; do
    [ -s "$f" ] || continue
    echo "----- tail of $f" >&2
    tail -n 25 "$f" >&2
  done
  if [ -n "${CLUSTER_KEEP_ON_FAILURE:-}" ]; then
    log "CLUSTER_KEEP_ON_FAILURE is set: leaving it running; '$0 stop $dir' when done"
  else
    cmd_stop "$dir" >/dev/null 2>&1 || true
  fi
  exit 1
}

# Is the daemon recorded as NAME alive? (used inside waits, so a crash ends the wait early)
need_alive() {
  recorded_pid "$1" "$2" >/dev/null || start_failed "$1" "$2 exited"
}

node_idle() {
  [ "$(sinfo -h -N -n "$1" -o %T 2>/dev/null)" = idle ]
}

cluster_known() {
  sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"
}

ssh_opts() { # DIR
  echo -F /dev/null -p "$SSH_PORT" -i "$1/ssh/id_ed25519" -o IdentitiesOnly=yes \
    -o UserKnownHostsFile="$1/ssh/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes \
    -o ConnectTimeout=5 -o LogLevel=ERROR
}

# Polls slurmd/slurmctld/... every 0.2 s, and checks liveness on each round.
wait_daemon() { # DIR NAME SECONDS WHAT CMD...
  local dir=$1 name=$2 secs=$3 what=$4; shift 4
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    need_alive "$dir" "$name"
    [ $SECONDS -lt $deadline ] || start_failed "$dir" "timed out after ${secs}s waiting for $what"
    sleep 0.2
  done
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "start must run as root"
  [ -z "${1:-}" ] || mkdir -p "$1"
  local dir
  dir=$(resolve_dir "${1:-}")
  local t0=$SECONDS

  local missing
  missing=$(missing_packages "${PACKAGES[@]}")
  [ -z "$missing" ] || die "missing packages: ${missing//$'\n'/ } (run: $0 install)"

  # A DIR from an earlier run is reused only when nothing of it still runs.
  local running
  running=$(stray_pids "$dir")
  [ -z "$running" ] || die "processes of an earlier cluster in $dir still run (${running//$'\n'/ }): run '$0 stop $dir' first"
  local port
  for port in $CTLD_PORT $SLURMD_PORT $DBD_PORT $MYSQL_PORT $SSH_PORT; do
    port_in_use "$port" && die "TCP port $port is already in use (another cluster running? see ss -ltnp)"
  done
  # sshd refuses public-key logins to an account locked with '!' when it runs without PAM.
  case "$(getent shadow root | cut -d: -f2)" in
    '!'*) die "root's password field starts with '!' (locked): sshd will refuse key logins; use 'usermod -p \"*\" root'" ;;
  esac
  rm -rf "${dir:?}"/{etc,log,run,pids,munge,mysql,spool,ssh,tmp,jobs,env}
  mkdir -p "$dir"/{etc,log,run,pids,munge,mysql,spool/ctld,spool/d,ssh,tmp,jobs}
  chmod 700 "$dir/munge" "$dir/ssh"
  # sshd's privilege separation directory (compiled in; shared with a system sshd, if any).
  install -d -m 0755 /run/sshd

  local node cpus mem hw
  node=$(hostname -s)
  # slurmd -C prints this host's real layout, e.g.
  # "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
  hw=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
  cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
  if [ -z "$cpus" ] || [ -z "$mem" ]; then die "could not read CPUs/RealMemory from slurmd -C: $hw"; fi

  write_configs "$dir" "$node" "$hw"
  export SLURM_CONF="$dir/etc/slurm.conf"

  # --- sshd first: it needs nothing else, and its keys are quick.
  ssh-keygen -q -t ed25519 -N '' -C "clove-cluster-host" -f "$dir/ssh/ssh_host_ed25519_key"
  ssh-keygen -q -t ed25519 -N '' -C "clove-cluster-client" -f "$dir/ssh/id_ed25519"
  cp "$dir/ssh/id_ed25519.pub" "$dir/ssh/authorized_keys"
  local hostkey
  hostkey=$(cut -d' ' -f1,2 "$dir/ssh/ssh_host_ed25519_key.pub")
  printf '[127.0.0.1]:%s %s\n[localhost]:%s %s\n' "$SSH_PORT" "$hostkey" "$SSH_PORT" "$hostkey" \
    >"$dir/ssh/known_hosts"
  /usr/sbin/sshd -t -f "$dir/ssh/sshd_config" || die "sshd rejects $dir/ssh/sshd_config"
  launch "$dir" sshd /usr/sbin/sshd -D -f "$dir/ssh/sshd_config" -E "$dir/log/sshd.log"

  # --- munged: own key (0400, in a directory only root can enter). munged also wants every
  # directory above its socket to be searchable by all, which a 0700 DIR (mktemp -d) is not;
  # --force turns that check into a warning. Every client here is root, so nothing is lost.
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile="$dir/munge/munge.key"
  else
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$dir/munge/munge.key"
  launch "$dir" munged munged --foreground --force --socket="$dir/munge/munged.sock" \
    --key-file="$dir/munge/munge.key" --pid-file="$dir/run/munged.pid" \
    --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

  # --- MariaDB: a fresh datadir; --no-defaults keeps /etc/mysql out of it. Root logs in through
  # the unix socket (unix_socket auth); slurmdbd uses a password over 127.0.0.1:MYSQL_PORT,
  # because slurmdbd.conf has no setting for a socket path.
  mariadb-install-db --no-defaults --datadir="$dir/mysql" --user=root \
    --auth-root-authentication-method=socket --skip-test-db \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
    >"$dir/log/mariadb-install-db.log" 2>&1 || start_failed "$dir" "mariadb-install-db failed"
  # Durability settings off: a throwaway database, and schema creation is faster without fsyncs.
  launch "$dir" mariadbd mariadbd --no-defaults --user=root --datadir="$dir/mysql" \
    --socket="$dir/run/mysqld.sock" --pid-file="$dir/run/mysqld.pid" \
    --log-error="$dir/log/mariadbd.log" --tmpdir="$dir/tmp" \
    --bind-address=127.0.0.1 --port="$MYSQL_PORT" --skip-name-resolve \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --sync-binlog=0 \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900

  wait_daemon "$dir" munged 20 "munged" \
    sh -c "munge --socket='$dir/munge/munged.sock' -n | unmunge --socket='$dir/munge/munged.sock'"
  wait_daemon "$dir" mariadbd 60 "MariaDB" \
    mariadb-admin --no-defaults --socket="$dir/run/mysqld.sock" -u root ping
  mariadb --no-defaults --socket="$dir/run/mysqld.sock" -u root -e "
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'clove-cluster';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
    || start_failed "$dir" "could not create the slurm database user"

  # --- slurmdbd (finds slurmdbd.conf next to SLURM_CONF); it creates its schema on first start.
  launch "$dir" slurmdbd slurmdbd -D
  wait_daemon "$dir" slurmdbd 60 "slurmdbd" sacctmgr -n list cluster
  # Register the cluster before slurmctld starts, so its first contact with slurmdbd finds it.
  sacctmgr -i add cluster "$CLUSTER_NAME" >>"$dir/log/sacctmgr.log" 2>&1 \
    || start_failed "$dir" "sacctmgr add cluster failed"
  wait_daemon "$dir" slurmdbd 20 "the cluster in sacctmgr" cluster_known

  # --- slurmctld, then slurmd (which registers the node with slurmctld).
  launch "$dir" slurmctld slurmctld -D -f "$SLURM_CONF"
  wait_daemon "$dir" slurmctld 30 "slurmctld" scontrol ping
  launch "$dir" slurmd slurmd -D -f "$SLURM_CONF" -N "$node"
  wait_daemon "$dir" slurmd 30 "node $node idle in sinfo" node_idle "$node"

  # --- ssh login with the throwaway key.
  # shellcheck disable=SC2046
  wait_daemon "$dir" sshd 20 "ssh to 127.0.0.1:$SSH_PORT" ssh $(ssh_opts "$dir") root@127.0.0.1 true

  cat >"$dir/env" <<EOF
export SLURM_CONF=$dir/etc/slurm.conf
export CLUSTER_DIR=$dir
export CLUSTER_NAME=$CLUSTER_NAME
export CLUSTER_PARTITION=$PARTITION
export CLUSTER_NODE=$node
export CLUSTER_CPUS=$cpus
export CLUSTER_MEMORY_MB=$mem
export CLUSTER_MUNGE_SOCKET=$dir/munge/munged.sock
export CLUSTER_SSH_HOST=127.0.0.1
export CLUSTER_SSH_PORT=$SSH_PORT
export CLUSTER_SSH_USER=root
export CLUSTER_SSH_KEY=$dir/ssh/id_ed25519
export CLUSTER_SSH_KNOWN_HOSTS=$dir/ssh/known_hosts
EOF
  log "started in $((SECONDS - t0))s: cluster $CLUSTER_NAME, node $node ($cpus CPUs, ${mem} MB), partition $PARTITION, ssh root@127.0.0.1:$SSH_PORT; env in $dir/env"
}

write_configs() { # DIR NODE HW
  local dir=$1 node=$2 hw=$3
  local auth="AuthType=auth/munge
AuthInfo=socket=$dir/munge/munged.sock"

  cat >"$dir/etc/slurm.conf" <<EOF
# Written by clove scripts/cluster.sh: a single-node throwaway cluster under $dir.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
$auth
CredType=cred/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: track job processes through /proc, bind no tasks.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# With slurmdbd, this names the munge socket for talking to slurmdbd (sacct, sacctmgr, slurmctld);
# AuthInfo above only covers slurmctld/slurmd. Without it they'd use /run/munge's default socket.
AccountingStoragePass=$dir/munge/munged.sock
JobCompType=jobcomp/none
# A node that was down (e.g. slurmd restarted) comes back as soon as it registers.
ReturnToService=2
# Short waits: TERM-to-KILL on scancel and the grace before a node is declared down.
KillWait=5
SlurmdTimeout=60
InactiveLimit=0
# Finished jobs stay visible in squeue/scontrol for 5 minutes (then only sacct has them).
MinJobAge=300
NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

  cat >"$dir/etc/slurmdbd.conf" <<EOF
# Written by clove scripts/cluster.sh.
$auth
DbdHost=$node
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$dir/log/slurmdbd.log
PidFile=$dir/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=clove-cluster
StorageLoc=slurm_acct_db
EOF
  # slurmdbd refuses a config file others can read (it holds the database password).
  chmod 600 "$dir/etc/slurmdbd.conf"

  cat >"$dir/ssh/sshd_config" <<EOF
# Written by clove scripts/cluster.sh: a loopback-only sshd for tests, keys only.
ListenAddress 127.0.0.1
Port $SSH_PORT
HostKey $dir/ssh/ssh_host_ed25519_key
PidFile $dir/run/sshd.pid
AuthorizedKeysFile $dir/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
# No PAM: Debian's PAM session stack (pam_loginuid) can fail in containers, and nothing here
# needs it. StrictModes off: DIR may sit under /tmp, whose mode sshd would reject.
UsePAM no
StrictModes no
# Every session finds this cluster's Slurm without the client passing anything.
SetEnv SLURM_CONF=$dir/etc/slurm.conf
# Generous session limits: tests multiplex many commands over one connection.
MaxSessions 64
MaxStartups 64:30:128
X11Forwarding no
PrintMotd no
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
}

# ---------------------------------------------------------------------------------------------
# stop

cmd_stop() {
  [ -n "${1:-}" ] || die "usage: $0 stop DIR"
  if [ ! -d "$1" ]; then log "nothing to stop: no $1"; return 0; fi
  local dir
  dir=$(resolve_dir "$1")
  if [ -f "$dir/etc/slurm.conf" ]; then export SLURM_CONF="$dir/etc/slurm.conf"; fi

  # Cancel jobs first, so slurmd and slurmstepd end them cleanly (bounded: slurmctld may be dead).
  if recorded_pid "$dir" slurmctld >/dev/null && recorded_pid "$dir" slurmd >/dev/null; then
    local jobs
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      local deadline=$((SECONDS + 10))
      while [ -n "$(timeout 5 squeue -h -t active -o %i 2>/dev/null || true)" ] &&
        [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    fi
  fi

  # Then the daemons, clients before servers; each with its descendants (sshd's connections).
  local name pid pids all=()
  for name in sshd slurmd slurmctld slurmdbd mariadbd munged; do
    pid=$(recorded_pid "$dir" "$name") || continue
    # shellcheck disable=SC2207
    pids=("$pid" $(descendants "$pid"))
    kill_pids 20 "${pids[@]}"
    all+=("${pids[@]}")
  done
  # Last, anything of this DIR still alive (job steps' slurmstepd, a daemon whose pid file is gone).
  local rest
  rest=$(stray_pids "$dir")
  if [ -n "$rest" ]; then
    # shellcheck disable=SC2206,SC2207,SC2086
    pids=($rest $(descendants $rest))
    kill_pids 3 "${pids[@]}"
    all+=("${pids[@]}")
  fi
  rest=$(stray_pids "$dir")
  [ -z "$rest" ] || die "still running after stop: ${rest//$'\n'/ }"
  wait_reaped "${all[@]}"
  rm -f "$dir"/pids/*
  log "stopped ($dir)"
}

# ---------------------------------------------------------------------------------------------
# check

# wait_sacct SECONDS JOBID STATE: until sacct reports the job (allocation line) in STATE.
wait_sacct() {
  local secs=$1 job=$2 want=$3 got=""
  local deadline=$((SECONDS + secs))
  while :; do
    got=$(sacct -n -X -P -j "$job" -o State 2>/dev/null | head -n 1)
    [[ "$got" == "$want"* ]] && return 0
    [ $SECONDS -lt $deadline ] || die "job $job: sacct says '$got' after ${secs}s, expected $want"
    sleep 0.3
  done
}

cmd_check() {
  local dir
  dir=$(resolve_dir "${1:-}")
  [ -f "$dir/env" ] || die "no $dir/env: start the cluster first"
  # shellcheck disable=SC1091
  . "$dir/env"
  CHECK_DIR=$dir
  local t0=$SECONDS jobs="$dir/jobs" job out state

  # 1. A tiny job runs, writes its output file, and reaches sacct as COMPLETED.
  # shellcheck disable=SC2016 # expanded by the job
  job=$(sbatch --parsable -J check-ok -D "$jobs" -o "$jobs/%j.out" \
    --wrap 'echo "hello from job $SLURM_JOB_ID on $(hostname)"')
  wait_sacct 60 "$job" COMPLETED
  out=$(cat "$jobs/$job.out" 2>/dev/null || true)
  [ "$out" = "hello from job $job on $(hostname)" ] || die "job $job output: '$out'"
  log "ok: job $job COMPLETED, output '$out'"

  # 2. A long job, cancelled while it runs, is CANCELLED in sacct.
  job=$(sbatch --parsable -J check-cancel -D "$jobs" -o /dev/null --wrap 'sleep 300')
  local deadline=$((SECONDS + 30))
  until [ "$(squeue -h -j "$job" -o %T 2>/dev/null)" = RUNNING ]; do
    [ $SECONDS -lt $deadline ] || die "job $job not RUNNING after 30s"
    sleep 0.2
  done
  scancel "$job"
  wait_sacct 30 "$job" CANCELLED
  log "ok: job $job RUNNING, then CANCELLED"

  # 3. A held job stays PENDING with a reason.
  job=$(sbatch --parsable --hold -J check-hold -D "$jobs" -o /dev/null --wrap true)
  state=$(squeue -h -j "$job" -o '%T %r')
  if ! [[ "$state" =~ ^PENDING\ [A-Za-z] ]] || [[ "$state" == *" None" ]]; then
    die "held job $job: squeue says '$state'"
  fi
  scancel "$job"
  log "ok: held job $job is '$state' in squeue"

  # 4. Slurm through the ssh server, with no flags: sshd sets SLURM_CONF itself.
  local -a ssh
  # shellcheck disable=SC2207
  ssh=(ssh $(ssh_opts "$dir"))
  # shellcheck disable=SC2016 # expanded by the remote shell
  out=$("${ssh[@]}" root@127.0.0.1 'echo "$SLURM_CONF"')
  [ "$out" = "$SLURM_CONF" ] || die "SLURM_CONF over ssh is '$out', not '$SLURM_CONF'"
  out=$("${ssh[@]}" root@127.0.0.1 squeue -h -o %i -j "$job" -t all)
  [ "$out" = "$job" ] || die "squeue over ssh: '$out'"
  job=$("${ssh[@]}" root@127.0.0.1 sbatch --parsable -D "$jobs" -o /dev/null --wrap true)
  wait_sacct 60 "$job" COMPLETED
  out=$("${ssh[@]}" root@127.0.0.1 sacct -n -X -P -j "$job" -o State)
  [ "$out" = COMPLETED ] || die "sacct over ssh: '$out'"
  log "ok: squeue, sbatch, sacct over ssh"

  # 5. ssh connection multiplexing: a master, a command through it, then -O exit.
  local cp="$dir/ssh/cm"
  local -a mux=("${ssh[@]}" -o ControlMaster=auto -o ControlPath="$cp" -o ControlPersist=60)
  # The persisting master is a background process: keep it away from our stdout/stderr.
  "${mux[@]}" root@127.0.0.1 true </dev/null >/dev/null 2>&1
  "${mux[@]}" -O check root@127.0.0.1 2>&1 | grep -q 'Master running' || die "no ssh master on $cp"
  out=$("${mux[@]}" -o ControlMaster=no root@127.0.0.1 squeue -h -o %i -j "$job" -t all)
  [ "$out" = "$job" ] || die "squeue through the ssh master: '$out'"
  "${mux[@]}" -O exit root@127.0.0.1 2>/dev/null
  deadline=$((SECONDS + 10))
  while [ -S "$cp" ]; do
    [ $SECONDS -lt $deadline ] || die "ssh master did not exit"
    sleep 0.1
  done
  log "ok: ssh ControlMaster multiplexing, then -O exit"

  log "check passed in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------------------
# sshd alone (tests of a login host that goes away and comes back)

# Stops the cluster's sshd and every connection it serves (a multiplexed ssh master's session
# too, so clients really lose the host), by the recorded pid and its descendants.
cmd_sshd_stop() {
  [ -n "${1:-}" ] || die "usage: $0 sshd-stop DIR"
  local dir pid pids
  dir=$(resolve_dir "$1")
  pid=$(recorded_pid "$dir" sshd) || { log "sshd is not running"; return 0; }
  # shellcheck disable=SC2207
  pids=("$pid" $(descendants "$pid"))
  kill_pids 10 "${pids[@]}"
  wait_reaped "${pids[@]}"
  log "sshd stopped ($dir)"
}

# Starts the cluster's sshd again with the config and keys `start` wrote; waits for a login.
cmd_sshd_start() {
  [ -n "${1:-}" ] || die "usage: $0 sshd-start DIR"
  local dir
  dir=$(resolve_dir "$1")
  if recorded_pid "$dir" sshd >/dev/null; then log "sshd is already running"; return 0; fi
  [ -f "$dir/ssh/sshd_config" ] || die "no $dir/ssh/sshd_config: run start first"
  port_in_use "$SSH_PORT" && die "port $SSH_PORT is in use"
  install -d -m 0755 /run/sshd
  launch "$dir" sshd /usr/sbin/sshd -D -f "$dir/ssh/sshd_config" -E "$dir/log/sshd.log"
  # shellcheck disable=SC2046
  wait_daemon "$dir" sshd 20 "ssh to 127.0.0.1:$SSH_PORT" ssh $(ssh_opts "$dir") root@127.0.0.1 true
  log "sshd started ($dir)"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start "${2:-}" ;;
  stop) cmd_stop "${2:-}" ;;
  check) cmd_check "${2:-}" ;;
  sshd-stop) cmd_sshd_stop "${2:-}" ;;
  sshd-start) cmd_sshd_start "${2:-}" ;;
  *) die "usage: $0 install | start DIR | check DIR | stop DIR | sshd-stop DIR | sshd-start DIR" ;;
esac
