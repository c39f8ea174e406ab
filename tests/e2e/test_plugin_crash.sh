#!/usr/bin/env bash
# test_plugin_crash.sh — a plugin that crashes fsrun is named:
#  - a segfault in an attention plugin's forward: one line naming the
#    signal, the plugin, the layer and the vtable call, then the signal's own
#    death (exit status 128 + SIGSEGV, so core dumps still happen);
#  - the same from a parallel_for body the plugin handed the host, run on
#    an OpenMP worker thread;
#  - a scheduler plugin's crash on the serving engine's thread (generate);
#  - an entry function that returns a bad pointer, in a graph and in
#    --list-plugins;
#  - a SIGSEGV sent to a running fsrun is said and still kills it.
# Under AddressSanitizer its own report follows the line and it ends the
# process (exit 1) instead of the signal.
. "$(dirname "$0")/lib.sh"

crash_dir="$FS_BUILD_DIR/tests/plugins/crash"
[ -f "$crash_dir/fsplugin_attention_test_crash.so" ] || die "no $crash_dir/fsplugin_attention_test_crash.so (build the tests)"
export FS_PLUGIN_PATH="$crash_dir:$FS_PLUGIN_PATH"
sanitized=0
[ -n "${ASAN_OPTIONS:-}" ] && sanitized=1

# died_of_segv: the last run ended by SIGSEGV (or by the sanitizer's report)
died_of_segv() {
    if [ "$sanitized" = 1 ]; then
        [ "$E2E_RC" -ne 0 ] && ok "$1: a failure status under the sanitizer ($E2E_RC)" || fail "$1: exit 0 after a crash"
    else
        assert_eq "$E2E_RC" 139 "$1: killed by SIGSEGV (the signal re-raised: 128 + 11)"
    fi
}

standard_data
write_graph g.ini attention.plugin=test_crash train.steps=2
run "$FSRUN" g.ini
died_of_segv "forward"
assert_eq "$(grep -c '^fsrun: Segmentation fault' "$E2E_ERR")" 1 "forward: one line"
assert_err "fsrun: Segmentation fault in attention plugin 'test_crash' (layer 0) during forward"

# a worker thread of parallel_for, two threads
run "$FSRUN" g.ini --set attention.crash=worker --set run.threads=2
died_of_segv "a parallel_for body on a worker"
assert_err "fsrun: Segmentation fault in attention plugin 'test_crash' (layer 0) during forward"

# the serving path: generate's request to the inline engine, whose
# scheduler crashes planning it (on the engine's thread)
write_graph serve.ini train.steps=2 generate.max_tokens=4 run.out=serve_out
must_fsrun serve.ini
run "$FSRUN" serve.ini --mode generate --prompt "The " --set serve.scheduler=test_crash
died_of_segv "a scheduler's schedule"
assert_err "fsrun: Segmentation fault in scheduler plugin 'test_crash' during schedule"

# an entry that returns a bad pointer: in a graph, and when listing plugins
write_graph g.ini attention.plugin=broken_bad_pointer
run "$FSRUN" g.ini
died_of_segv "a bad descriptor pointer"
assert_err "fsrun: Segmentation fault in plugin '" "fsplugin_attention_broken_bad_pointer.so' during fs_plugin_entry"
run "$FSRUN" --list-plugins
died_of_segv "--list-plugins"
assert_err "fsplugin_attention_broken_bad_pointer.so' during fs_plugin_entry"

# a SIGSEGV sent (not a fault): said, then raised again
if [ "$sanitized" = 0 ]; then
    write_graph slow.ini train.steps=100000 generate.max_tokens=0
    "$FSRUN" slow.ini >slow.out 2>slow.err &
    pid=$!
    for _ in $(seq 100); do [ -s slow.err ] && break; sleep 0.1; done
    sleep 0.3
    kill -SEGV $pid
    set +e
    wait $pid
    rc=$?
    set -e
    assert_eq "$rc" 139 "a sent SIGSEGV: killed by it"
    assert_contains "$(cat slow.err)" "fsrun: Segmentation fault" "a sent SIGSEGV: said"
fi

e2e_finish
