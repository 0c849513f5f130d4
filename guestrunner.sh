# The body of a run's runner.sh: vmup writes a header above it that sets
# RUN_ID, STOP_TIMEOUT (seconds) and the workload's words ("$@"), uploads it
# to ~/.vmup/runs/RUN_ID/ and starts it there, detached, with
# `nohup sh runner.sh`. It needs a POSIX sh (dash, busybox sh) and GNU
# coreutils only; the file formats are runproto.go's.

umask 077
# The runner outlives its workload to record how it ended: a signal meant for
# a session, a terminal or a shutdown's first round is the workload's alone.
# Ignored here, it is ignored by what the runner starts too, except the
# workload: timeout catches INT, HUP and TERM, so its command starts with them
# at their defaults.
trap '' INT HUP TERM

# put FILE LINE: a state file is whole or absent, never half written.
put() {
	printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"
}

# now_cs sets now to centiseconds of a monotonic clock (the epoch's without /proc).
now_cs() {
	if [ -r /proc/uptime ] && read -r now _ </proc/uptime; then
		now=$((${now%.*} * 100 + 1${now#*.} - 100))
	else
		now=$(($(date +%s) * 100))
	fi
}

# stop_requested: a stop file names this run.
stop_requested() {
	[ -f stop ] || return 1
	s=
	read -r s _ <stop || :
	[ "$s" = "$RUN_ID" ]
}

# read_started sets pg to the workload's process group, once this run's
# started file is there.
read_started() {
	[ -f started ] || return 1
	id= pg=
	read -r id _ pg <started || :
	[ "$id" = "$RUN_ID" ] && [ -n "$pg" ]
}

# in_group PGID STATFILE: the process of /proc/PID/stat runs in group PGID.
in_group() {
	l=
	{ read -r l <"$2"; } 2>/dev/null || return 1
	l=${l##*) }
	case $l in [ZXx]*) return 1 ;; esac
	l=${l#* }
	l=${l#* }
	[ "${l%% *}" = "$1" ]
}

# group_lives PGID: a process of the group runs. A zombie does not count: it
# holds no file open and runs no code, and where no init reaps orphans it
# stays in its group for good. Without /proc, signalable is alive. The
# leader (timeout) is looked at first: the look at every process is slow.
group_lives() {
	kill -0 "-$1" 2>/dev/null || return 1
	[ -r /proc/self/stat ] || return 0
	in_group "$1" "/proc/$1/stat" && return 0
	for f in /proc/[0-9]*/stat; do
		in_group "$1" "$f" && return 0
	done
	return 1
}

# wait_gone PGID DEADLINE: true once no process of the group lives, false
# at DEADLINE (now_cs). Signalling the group is cheap and done every tenth of
# a second; the look for zombies in /proc every third time.
wait_gone() {
	n=0
	while kill -0 "-$1" 2>/dev/null; do
		n=$((n + 1))
		if [ $((n % 3)) = 0 ]; then
			group_lives "$1" || return 0
		fi
		now_cs
		[ "$now" -lt "$2" ] || return 1
		sleep 0.1
	done
}

# A group is signalled as `kill -SIG -PGID`, the one form dash, bash and
# busybox sh all take: dash wants `--` before -PGID after `-s SIG`, busybox
# refuses `--`.

# escalate PGID: SIGINT; SIGTERM at half the stop timeout; SIGKILL at nine
# tenths; back once the group is gone, or 5 s after SIGKILL (a process in
# uninterruptible sleep dies when its I/O ends).
escalate() {
	# timeout makes its group first thing, but a stop may come before that:
	# wait for the group, or for the end of a workload that never made one.
	i=0
	while [ $i -lt 100 ] && [ ! -f workload.code ] && ! kill -0 "-$1" 2>/dev/null; do
		sleep 0.05
		i=$((i + 1))
	done
	now_cs
	t0=$now
	kill -INT "-$1" 2>/dev/null
	wait_gone "$1" $((t0 + STOP_TIMEOUT * 50)) && return
	kill -TERM "-$1" 2>/dev/null
	wait_gone "$1" $((t0 + STOP_TIMEOUT * 90)) && return
	kill -KILL "-$1" 2>/dev/null
	now_cs
	wait_gone "$1" $((now + 500)) && return
	echo "vmup runner: process group $1 still has processes 5 s after SIGKILL" >&2
}

printf '%s\n' "$$" >runner.pid # only for a person to look at: no mv, one process fewer

# A stop that came first: the workload never starts.
# The confirmation goes before the exit, here and at the end: whoever sees
# exit sees the run's last state.
if stop_requested; then
	put confirmed "$RUN_ID 130"
	put exit "$RUN_ID 130"
	exit 0
fi

# The waiter starts the workload and waits for it: timeout makes a process
# group of its own (pgid = its pid = $!) and execs the workload as argv, in
# the home dir, stdin /dev/null, both outputs to output.log. The waiter alone
# can wait for it: workload.code tells the others that it ended.
if [ -f workload.code ]; then rm -f workload.code; fi
(
	(cd "$HOME" || exit 126; exec timeout 0 "$@") </dev/null >>output.log 2>&1 &
	put started "$RUN_ID $(date +%s) $!"
	wait "$!"
	printf '%s\n' "$?" >workload.code # internal: read only after the waiter ended, so no mv
) &
waiter=$!

stopping=
while [ ! -f workload.code ]; do
	if stop_requested && read_started; then
		stopping=1
		escalate "$pg"
		break
	fi
	sleep 0.1
done

# What the workload left in its group goes the same way, so that once exit
# is there nothing writes output.log any more.
if [ -z "$stopping" ] && read_started && group_lives "$pg"; then
	escalate "$pg"
fi
wait "$waiter"
code=125
[ -f workload.code ] && read -r code <workload.code
if [ -n "$stopping" ] || stop_requested; then
	put confirmed "$RUN_ID $code"
fi
put exit "$RUN_ID $code"
