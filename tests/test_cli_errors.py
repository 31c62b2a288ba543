"""User mistakes on the command line: one clear line, a non-zero exit, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "flag, value, fragment",
    [("--ctx", "abc", "--ctx"), ("--ctx", "0", "at least 1"), ("--max-ppl-increase", "lots", "percentage"),
     ("--memory-budget", "big", "size"), ("--protocol", "rolling", "invalid choice"), ("--threads", "-2", "--threads"),
     ("--warmup", "-1", "at least 0"), ("--llamacpp-type-k", "q9", "--llamacpp-type-k"),
     ("--llamacpp-n-batch", "x", "whole number")],
)
def test_bad_flag_value_is_one_line(tmp_path, flag, value, fragment):
    assert_one_line(run_cli("compare", flag, value, cwd=tmp_path), fragment)
    assert not any(tmp_path.iterdir())


def test_unknown_variant_is_one_line(tmp_path):
    assert_one_line(run_cli("compare", "--variants", "torch-fp8", cwd=tmp_path), "torch-fp8", "choose from")
    assert not any(tmp_path.iterdir())


def test_missing_model_path_is_one_line(tmp_path):
    assert_one_line(run_cli("compare", "--model", "no/such/model.gguf", cwd=tmp_path), "no/such/model.gguf")
    assert not any(tmp_path.iterdir())


def test_empty_text_is_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_one_line(run_cli("compare", "--text", "empty.txt", cwd=tmp_path), "empty.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["empty.txt"]


def test_text_shorter_than_a_window_is_one_line(tmp_path):
    (tmp_path / "short.txt").write_text("Just a few words here.")
    assert_one_line(run_cli("compare", "--text", "short.txt", "--variants", "llamacpp-q8_0", cwd=tmp_path),
                    "short.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["short.txt"]


def test_invalid_utf8_text_is_one_line(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    assert_one_line(run_cli("compare", "--text", "latin1.txt", cwd=tmp_path), "latin1.txt", "UTF-8")


def test_resume_without_an_earlier_run_is_one_line(tmp_path):
    assert_one_line(run_cli("compare", "--resume", "--variants", "llamacpp-q8_0", cwd=tmp_path), "--resume")


def test_show_unknown_run_is_one_line(tmp_path):
    store = tmp_path / "s.sqlite"
    assert_one_line(run_cli("show", "nope", "--store", str(store), cwd=tmp_path), "nope")


def test_a_runtime_setting_that_contradicts_another_is_one_line(tmp_path):
    line = assert_one_line(run_cli("compare", "--llamacpp-n-ubatch", "1024", "--llamacpp-n-batch", "512",
                                   cwd=tmp_path), "--llamacpp")
    assert "n_ubatch" in line
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", [("compare", "--variants", "llamacpp-q8_0"), ("history",), ("show", "some-run"),
                                     ("diff", "run-a", "run-b")])
def test_a_store_that_is_not_a_database_is_one_line_before_any_work(tmp_path, command):
    (tmp_path / "notes.txt").write_text("my notes, not a database\n")
    line = assert_one_line(run_cli(*command, "--store", "notes.txt", cwd=tmp_path), "--store notes.txt",
                           "not a harness results store")
    assert "pass another file" in line
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]  # nothing measured, nothing written
    assert (tmp_path / "notes.txt").read_text() == "my notes, not a database\n"


def test_an_unknown_reference_is_named_as_the_reference_not_as_a_variant(tmp_path):
    line = assert_one_line(run_cli("compare", "--variants", "llamacpp-q8_0", "--reference", "llamacpp-q9",
                                   cwd=tmp_path), "--reference llamacpp-q9", "choose from")
    assert "--variants" not in line
