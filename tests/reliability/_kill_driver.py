"""Run the real ``cleanface`` command line, and SIGKILL the process at the k-th "event".

Two ways to start it:

* ``python _kill_driver.py EVENT_LOG KILL_AT STOP_AT -- cleanface arguments...`` runs one
  command in this fresh interpreter;
* ``python _kill_driver.py --serve`` imports cleanface (and torch) once, then reads one JSON
  request per line on stdin and runs each command in a child forked for it, answering with
  the child's exit status (see :func:`serve`). Every command still runs in its own process,
  which the kill ends as abruptly as any other; only the seconds of importing torch are shared.

Events are the points where an interruption hurts most: every file rename (``os.replace``:
the end of each atomic write, staging renames), every hard link of a written dataset,
every training step, every chunk of embedded images and every decoded-image chunk of the
decode cache. Before each event its name is appended to ``EVENT_LOG`` (flushed, so the
log survives the kill); when the event count reaches ``KILL_AT`` (> 0) the process sends
itself SIGKILL before doing the event: no cleanup handler, ``finally`` or ``atexit`` runs,
exactly as when the machine's OOM killer or a scheduler ends a job. ``KILL_AT = 0`` runs
to the end (the reference run), logging every event. A served request may instead name the
event to die at (``kill_on``, e.g. ``"replace COMPLETE"``: just before the completion mark). ``STOP_AT`` (> 0) sends SIGSTOP
instead: the process stays alive, holding its locks, until the test sends SIGCONT.

The embedding and decode-cache chunks are lowered to 16 images so that tiny data sets span
several chunks; reference and interrupted runs use the same driver, so they compute the same.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def install_hooks(log_path: str, kill_at: int, stop_at: int, kill_on: str = "") -> None:
    import cleanface.data.cache as cache_module
    import cleanface.inference.embed as embed_module
    import cleanface.training.trainer as trainer_module

    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (kept open until the process ends)
    count = 0

    def event(name: str) -> None:
        nonlocal count
        count += 1
        log.write(f"{count}\t{name}\n")
        log.flush()
        if count == kill_at or name == kill_on:
            os.kill(os.getpid(), signal.SIGKILL)
        if count == stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)

    def wrap(owner: object, attr: str, name) -> None:
        original = getattr(owner, attr)

        def wrapper(*a, **kw):
            event(name(*a))
            return original(*a, **kw)

        setattr(owner, attr, wrapper)

    wrap(os, "replace", lambda src, dst, *_: f"replace {os.path.basename(os.fspath(dst))}")
    wrap(os, "link", lambda src, dst, *_: "link")
    wrap(trainer_module._Trainer, "_step", lambda *a: "train step")
    wrap(embed_module, "embed_arrays", lambda *a: "embed chunk")
    wrap(cache_module, "_decode_many", lambda *a: "decode chunk")
    embed_module.CHUNK = 16
    cache_module._CHUNK = 16


def run_cli(args: list[str]) -> int:
    from cleanface_cli.main import cli

    try:
        cli.main(args=args, prog_name="cleanface", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def serve() -> None:
    """Fork one child per request line ``{"op", "args", "log", "kill_at", "kill_on", "stop_at", "output", "cwd"}``.

    ``op`` "run" (the default) answers ``{"returncode"}`` when the child ends; "start" answers
    ``{"pid"}`` at once, and a later ``{"op": "wait", "pid"}`` answers that child's ``{"returncode"}``.
    """
    import cleanface.data.cache  # noqa: F401  (everything a command needs, imported once)
    import cleanface.purify.runner  # noqa: F401
    import cleanface.report.purify  # noqa: F401
    import cleanface.report.training  # noqa: F401
    import cleanface.inference.embed  # noqa: F401
    import cleanface.inference.run  # noqa: F401
    import cleanface.training.trainer  # noqa: F401
    import cleanface_cli.main  # noqa: F401
    import torch._dynamo  # noqa: F401  (the first optimiser imports it: two seconds)

    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "wait":  # the exit status of a child started earlier
            answer = {"returncode": _wait(int(request["pid"]))}
        else:
            pid = os.fork()
            if pid == 0:  # the child: one command, then gone
                code = 1
                try:
                    fd = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    os.chdir(request.get("cwd") or os.getcwd())
                    install_hooks(request["log"], request["kill_at"], request["stop_at"], request.get("kill_on", ""))
                    code = run_cli(request["args"])
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            # "start" answers at once (the test watches the child, then asks to "wait"); "run" waits for it
            answer = {"pid": pid} if request.get("op") == "start" else {"returncode": _wait(pid)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    log_path, kill_at, stop_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    assert sys.argv[4] == "--"
    install_hooks(log_path, kill_at, stop_at)
    sys.exit(run_cli(sys.argv[5:]))


if __name__ == "__main__":
    main()
