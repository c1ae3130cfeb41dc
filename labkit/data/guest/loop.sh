# labkit probe, part 2 (inlined into probe.sh by labkit.core.data.probe_script; tests source it alone):
# save the bundle on /data, and the armed reboot loop (docs/contracts.md, "The reboot loop").
# POSIX sh + busybox applets only (awk, sed, cp, mv, sync, mount, findfs). No function here exits the shell.
#
# The loop state is /data/labkit/loop.json, written by `labkit measure arm` and rewritten here, one key per
# line in a fixed layout (labkit.lab.hwloop.state_json) so that this shell can read it with awk:
#   "armed": true|false   "plan": ["nixos", "alpine", ...]   "next": <index into plan of the boot expected now>
#   "expected": "<system>"   "rebooted_at": <epoch s of the loop's last reboot, 0: none yet>
#   "max_gap_s": <a boot that comes back later than this after the loop's reboot is a failed boot>
#   "title_<system>": "<rEFInd menuentry title>"   "esp_label": "ESP"   "conf": "EFI/BOOT/refind.conf"
#   "reason": "<why the loop stopped>"   "boots": [ one {...} per line ]

# labkit_save FILE DIR NAME: copy FILE to DIR/NAME atomically (temporary file, sync, rename, sync).
labkit_save() {
	mkdir -p "$2" || return 1
	cp "$1" "$2/.$3.tmp" || { rm -f "$2/.$3.tmp"; return 1; }
	sync
	mv -f "$2/.$3.tmp" "$2/$3" || return 1
	sync
}

# labkit_get STATE KEY: the raw value of "KEY": on its own line (quotes and the trailing comma removed).
labkit_get() {
	awk -v k="\"$2\":" '$1 == k { sub(/^[^:]*:[ \t]*/, ""); sub(/,[ \t]*$/, ""); gsub(/^"|"$/, ""); print; exit }' "$1"
}

# labkit_plan STATE: the plan's systems, one word each.
labkit_plan() {
	labkit_get "$1" plan | tr -d '[]",'
}

# labkit_nth N WORDS...: the N-th word (0-based), empty when out of range.
labkit_nth() {
	_n=$1
	shift
	[ "$_n" -ge 0 ] 2>/dev/null || return 0
	[ "$_n" -lt $# ] || return 0
	shift "$_n"
	echo "$1"
}

# labkit_family OS: alpine-rehearsal -> alpine, nixos -> nixos
labkit_family() {
	echo "${1%%-*}"
}

# labkit_loop_decide STATE SYSTEM BOOTID NOW: what the loop does on this boot, one line:
#   idle                      not armed, or this boot is already recorded
#   reboot <index> <next>     this boot (plan index <index>) was the expected one: record it ok, boot <next>
#   done <index>              this boot was the expected one and the last of the plan
#   fail <index> <reason...>  the expected boot (plan index <index>) never came: record it failed and stop
# Pure: reads STATE only.
labkit_loop_decide() {
	_st=$1 _sys=$(labkit_family "$2") _boot=$3 _now=$4
	[ -f "$_st" ] || { echo idle; return 0; }
	[ "$(labkit_get "$_st" armed)" = true ] || { echo idle; return 0; }
	if grep -q "\"boot_id\": \"$_boot\"" "$_st"; then echo idle; return 0; fi
	_next=$(labkit_get "$_st" next)
	_exp=$(labkit_get "$_st" expected)
	_at=$(labkit_get "$_st" rebooted_at)
	_gap=$(labkit_get "$_st" max_gap_s)
	# shellcheck disable=SC2046 # the plan is blank-separated system names
	set -- $(labkit_plan "$_st")
	case "$_next" in '' | *[!0-9]*) echo "fail 0 the loop state has no valid next index"; return 0 ;; esac
	if [ "$_next" -ge $# ]; then echo "fail $_next the loop state's next index is past the plan"; return 0; fi
	if [ "$_sys" != "$_exp" ]; then
		echo "fail $_next $_sys came up instead of the expected $_exp"
		return 0
	fi
	case "$_at" in '' | *[!0-9]*) _at=0 ;; esac
	case "$_gap" in '' | *[!0-9]*) _gap=0 ;; esac
	if [ "$_at" -gt 0 ] && [ "$_gap" -gt 0 ] && [ $((_now - _at)) -gt "$_gap" ]; then
		echo "fail $_next $_exp came back $((_now - _at)) s after the loop's reboot (more than $_gap s): the expected boot hung or was reset"
		return 0
	fi
	_after=$((_next + 1))
	if [ "$_after" -ge $# ]; then echo "done $_next"; return 0; fi
	echo "reboot $_next $(labkit_nth "$_after" "$@")"
}

# labkit_state_write STATE ARMED NEXT EXPECTED REBOOTED_AT REASON [BOOT_LINE]: rewrite the state file
# atomically, keeping every key it has and every recorded boot, appending BOOT_LINE (a {...} object).
labkit_state_write() {
	_st=$1
	_reason=$(printf '%s' "$6" | tr -d '"\134')
	awk -v armed="$2" -v next_="$3" -v ex="$4" -v at="$5" -v reason="$_reason" -v add="${7:-}" '
		function val(k, v) { return "  \"" k "\": " v }
		/^  "boots": \[/ { inb = 1; next }
		inb && /^  \]/ { inb = 0; next }
		inb { sub(/,[ \t]*$/, ""); if ($0 ~ /\{/) boots[++n] = $0; next }
		/^  "armed":/ { print val("armed", armed) ","; next }
		/^  "next":/ { print val("next", next_) ","; next }
		/^  "expected":/ { print val("expected", "\"" ex "\"") ","; next }
		/^  "rebooted_at":/ { print val("rebooted_at", at) ","; next }
		/^  "reason":/ { print val("reason", "\"" reason "\"") ","; next }
		/^}/ { next }
		{ print }
		END {
			if (add != "") boots[++n] = "    " add
			print "  \"boots\": ["
			for (i = 1; i <= n; i++) print boots[i] (i < n ? "," : "")
			print "  ]"
			print "}"
		}' "$_st" > "$_st.tmp" || { rm -f "$_st.tmp"; return 1; }
	sync
	mv -f "$_st.tmp" "$_st" && sync
}

# labkit_conf_select CONF TITLE: set `default_selection "TITLE"` in rEFInd's refind.conf, a one-line change
# (rEFInd config.c: default_selection takes one token, a quoted title is one; menu.c matches it as a
# case-insensitive substring of the entry titles; refind-firmware.md §2.3). The first time, the original is
# kept as CONF.labkit-orig. The new file is written beside and renamed over CONF.
labkit_conf_select() {
	[ -f "$1" ] || return 1
	if [ ! -f "$1.labkit-orig" ]; then
		cp "$1" "$1.labkit-orig.tmp" && sync && mv -f "$1.labkit-orig.tmp" "$1.labkit-orig" || return 1
	fi
	awk -v sel="default_selection \"$2\"" '
		/^[ \t]*default_selection([ \t]|$)/ { if (!done) print sel; done = 1; next }
		/^[ \t]*menuentry[ \t]/ && !done { print sel; done = 1 }
		{ print }
		END { if (!done) print sel }' "$1" > "$1.labkit-tmp" || { rm -f "$1.labkit-tmp"; return 1; }
	sync
	mv -f "$1.labkit-tmp" "$1" && sync
}

# labkit_conf_restore CONF: put the original refind.conf back (nothing to do when none was kept).
labkit_conf_restore() {
	[ -f "$1.labkit-orig" ] || return 0
	cp "$1.labkit-orig" "$1.labkit-tmp" && sync && mv -f "$1.labkit-tmp" "$1" && sync && rm -f "$1.labkit-orig" && sync
}

# labkit_esp_mount STATE: print the ESP's mount point (LABKIT_LOOP_ESP in tests; else a rw mount of the
# filesystem labelled esp_label that already exists, else a new one at /run/labkit-esp).
labkit_esp_mount() {
	if [ -n "${LABKIT_LOOP_ESP:-}" ]; then echo "$LABKIT_LOOP_ESP"; return 0; fi
	_lbl=$(labkit_get "$1" esp_label)
	_dev=$(findfs "LABEL=${_lbl:-ESP}" 2>/dev/null) || return 1
	_mnt=$(awk -v d="$_dev" '$1 == d && $4 ~ /(^|,)rw(,|$)/ { print $2; exit }' /proc/mounts)
	if [ -n "$_mnt" ]; then echo "$_mnt"; return 0; fi
	mkdir -p /run/labkit-esp && mount -t vfat "$_dev" /run/labkit-esp && echo /run/labkit-esp
}

# labkit_loop STATE SYSTEM BOOTID [REASON]: one step of the armed loop after the bundle is saved; prints
# what it did. With REASON (a step of the probe failed), an armed loop records this boot failed and stops.
# LABKIT_LOOP_NOW (epoch seconds) and LABKIT_LOOP_REBOOT (the command that reboots: else systemctl reboot
# where systemd runs, busybox/OpenRC's reboot elsewhere) are overridable; LABKIT_LOOP_RUN instead of /run.
labkit_loop() {
	_now=${LABKIT_LOOP_NOW:-$(date +%s)}
	if [ -n "${4:-}" ] && [ -f "$1" ] && [ "$(labkit_get "$1" armed)" = true ]; then
		_d="fail $(labkit_get "$1" next) $4"
	else
		_d=$(labkit_loop_decide "$1" "$2" "$3" "$_now")
	fi
	# shellcheck disable=SC2086 # the decision is blank-separated words
	set -- "$1" "$2" "$3" $_d
	_st=$1 _fam=$(labkit_family "$2") _boot=$3 _act=$4
	[ "$_act" = idle ] && return 0
	_idx=$5
	_conf_rel=$(labkit_get "$_st" conf)
	_esp=$(labkit_esp_mount "$_st") || _esp=
	_conf=$_esp/${_conf_rel:-EFI/BOOT/refind.conf}
	_okline="{\"index\": $_idx, \"system\": \"$_fam\", \"boot_id\": \"$_boot\", \"status\": \"ok\", \"at\": $_now}"
	case "$_act" in
	reboot)
		_nsys=$6
		_title=$(labkit_get "$_st" "title_$_nsys")
		if [ -z "$_esp" ]; then
			_why="cannot mount the ESP (label $(labkit_get "$_st" esp_label)) to set the next default"
		elif [ -z "$_title" ]; then
			_why="the loop state has no rEFInd title for $_nsys"
		elif ! labkit_conf_select "$_conf" "$_title"; then
			_why="cannot write $_conf"
		else
			_why=
		fi
		if [ -n "$_why" ]; then
			labkit_conf_restore "$_conf"
			labkit_state_write "$_st" false "$_idx" "$_fam" 0 "stopped: $_why" "$_okline"
			echo "labkit-loop: stopped: $_why"
			return 0
		fi
		if ! labkit_state_write "$_st" true "$((_idx + 1))" "$_nsys" "$_now" "" "$_okline"; then
			labkit_conf_restore "$_conf"
			echo "labkit-loop: stopped: cannot write $_st"
			return 0
		fi
		[ "$_esp" = /run/labkit-esp ] && umount /run/labkit-esp 2>/dev/null
		echo "labkit-loop: boot $_idx ($_fam) recorded; next: boot $((_idx + 1)) ($_nsys, rEFInd default \"$_title\"); rebooting"
		: > "${LABKIT_LOOP_RUN:-/run}/labkit-loop-rebooting" 2>/dev/null
		sync
		if [ -n "${LABKIT_LOOP_REBOOT:-}" ]; then
			$LABKIT_LOOP_REBOOT
		elif command -v systemctl > /dev/null 2>&1; then
			# systemd: an ordered reboot (a signal to PID 1 from another tool's reboot could mean re-exec)
			systemctl --no-block reboot
		else
			reboot
		fi
		;;
	done)
		labkit_conf_restore "$_conf"
		labkit_state_write "$_st" false "$((_idx + 1))" "" 0 "done: every boot of the plan came back" "$_okline"
		echo "labkit-loop: boot $_idx ($_fam) recorded; the plan is done; disarmed, rEFInd default restored"
		;;
	fail)
		shift 5
		_exp=$(labkit_get "$_st" expected)
		_failline="{\"index\": $_idx, \"system\": \"$_exp\", \"boot_id\": \"\", \"status\": \"failed\", \"at\": $_now, \"reason\": \"$(printf '%s' "$*" | tr -d '"\134')\"}"
		labkit_conf_restore "$_conf"
		labkit_state_write "$_st" false "$_idx" "$_exp" 0 "failed: $*" "$_failline"
		echo "labkit-loop: boot $_idx failed: $*; disarmed, rEFInd default restored"
		;;
	esac
	[ "$_esp" = /run/labkit-esp ] && umount /run/labkit-esp 2>/dev/null
	return 0
}
