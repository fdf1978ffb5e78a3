#!/usr/bin/env bash
# Run by test_cli_hostile.sh inside `unshare -rm` (a private user and mount namespace): a 2 MB
# tmpfs is a really full disk (ENOSPC) without root, gone when the namespace ends. Prints one
# line per fact for the caller to check.
# usage: enospc_case.sh TAPEGRAD_TRAIN MOUNT_DIR COPY_DIR TRAIN_ARGS...
set -u
bin=$1 disk=$2 copy=$3
shift 3
mount -t tmpfs -o size=2m tapegrad-test "$disk" || { echo "mount failed"; exit 1; }
tg() { PATH=/nonexistent "$bin" "$@"; }
tg train "$@" --save "$disk/run" --stop-after 2 >/dev/null 2>&1 || { echo "first run failed"; exit 1; }
cp -r "$disk/run/last" "$copy" || { echo "cannot copy last/"; exit 1; }
# fill the disk, leaving 64 KB: the next checkpoint (about 200 KB) cannot be written
avail=$(df -k --output=avail "$disk" | tail -1)
dd if=/dev/zero of="$disk/filler" bs=1k count=$((avail > 64 ? avail - 64 : 0)) status=none 2>/dev/null
rc=0
tg train --resume "$disk/run" --stop-after 3 >/dev/null 2>"$copy.err" || rc=$?
echo "rc=$rc"
grep -o "No space left on device" "$copy.err" | head -1
grep -qF "the partial $disk/run/last.tmp was removed and the previous checkpoint is kept" "$copy.err" &&
  echo cleanup-message
echo "tmp-left=$(find "$disk/run" -name '*.tmp' | wc -l)"
diff -r "$copy" "$disk/run/last" >/dev/null && echo last-unchanged
rm -f "$disk/filler"
tg train --resume "$disk/run" --stop-after 3 >/dev/null 2>&1 && echo resumed-after-freeing
exit 0
