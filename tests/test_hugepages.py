"""The experiment scripts' restart with huge pages for malloc (``lstm_jax.tasks.hugepages``)."""

import os
import subprocess
import sys
import textwrap

import pytest

from lstm_jax.tasks import hugepages


def test_thp_mode_reads_the_bracketed_word(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert hugepages._thp_mode(str(path)) == "madvise"
    path.write_text("[never] madvise always\n")
    assert hugepages._thp_mode(str(path)) == "never"
    assert hugepages._thp_mode(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tunable is glibc's, on Linux")
def test_supported_needs_glibc_2_35_and_thp_not_never():
    assert hugepages.supported(glibc=(2, 35), thp="madvise")
    assert hugepages.supported(glibc=(2, 36), thp="always")
    assert not hugepages.supported(glibc=(2, 34), thp="always")  # the tunable is new in 2.35
    assert not hugepages.supported(glibc=(2, 36), thp="never")


def test_environment_adds_the_tunable_once_and_respects_the_user(monkeypatch):
    monkeypatch.setattr(hugepages, "supported", lambda: True)
    env = hugepages.environment({"PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
        "glibc.malloc.trim_threshold=18446744073709551615",
    }
    assert hugepages.active(env) and hugepages.environment(env) is None  # never a second restart
    other = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})  # the user's value stays
    assert other["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
        "glibc.malloc.trim_threshold=18446744073709551615"
    )
    assert hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert hugepages.environment({"LSTM_JAX_HUGEPAGES": "0"}) is None
    monkeypatch.setattr(hugepages, "supported", lambda: False)
    assert hugepages.environment({}) is None


_SCRIPT = textwrap.dedent(
    """
    import os, sys
    print("start", os.getpid(), flush=True)
    from lstm_jax.tasks import cli
    def main(argv):
        print("run", os.getpid(), os.environ.get("GLIBC_TUNABLES", "-"), sys.argv[1:], flush=True)
    sys.exit(cli.run_main(main))
    """
)


@pytest.mark.parametrize("opt_out", [False, True])
def test_a_script_restarts_once_in_the_same_process_with_its_arguments(tmp_path, opt_out):
    script = tmp_path / "script.py"
    script.write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
    if opt_out:
        env[hugepages.OPT_OUT] = "0"
    out = subprocess.run(
        [sys.executable, str(script), "--flag", "a b"], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = [line.split(" ", 2) for line in out.stdout.splitlines()]
    starts = [pid for word, pid, *_ in lines if word == "start"]
    (run,) = [rest for word, *rest in lines if word == "run"]
    restarted = hugepages.supported() and not opt_out
    assert len(starts) == (2 if restarted else 1)
    assert len(set(starts)) == 1 and run[0] == starts[0]  # execv: the same pid throughout
    assert run[1].startswith(":".join(hugepages.TUNABLES) + " " if restarted else "- ")
    assert run[1].endswith("['--flag', 'a b']")
