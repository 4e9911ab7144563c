"""`python -m sandbox up|demo` (console script `k3s-upgrade-sandbox`).

    up    start a sandbox cluster and keep it running until Ctrl-C / SIGTERM (then tear it all down)
    demo  the k3s docs' two Plans on 3 servers + 5 agents, with live progress (what `make demo` runs)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sandbox.channels import version_key
from sandbox.cluster import Sandbox, SandboxConfig, SandboxError
from sandbox.demo import DEMO_FROM, DEMO_TO, run_demo


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="k3s-upgrade-sandbox", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a sandbox cluster until Ctrl-C")
    up.add_argument("--servers", type=int, default=1, help="server nodes (default 1)")
    up.add_argument("--agents", type=int, default=2, help="agent nodes (default 2)")
    up.add_argument("--from", dest="from_version", default=DEMO_FROM,
                    help=f"k3s version the nodes start on (default {DEMO_FROM})")
    up.add_argument("--release", action="append", default=[],
                    help=f"a version the release server offers (repeatable; default {DEMO_FROM}, {DEMO_TO})")
    up.add_argument("--stable", default=None,
                    help="version of the `stable` channel (default: newest release)")
    up.add_argument("--state-dir", type=Path, default=None,
                    help="keep state and logs here (default: a temporary directory removed at exit)")
    up.add_argument("--kubeconfig", type=Path, default=None,
                    help="use this already-running API server instead of the embedded emulator")
    up.add_argument("--netns", action="store_true", help="run each node's agent in its own network namespace")
    demo = sub.add_parser("demo", help="the docs' two Plans on 3 servers + 5 agents, with live progress")
    demo.add_argument("--servers", type=int, default=3, help="server nodes (default 3)")
    demo.add_argument("--agents", type=int, default=5, help="agent nodes (default 5)")
    demo.add_argument("--timeout", type=float, default=110.0,
                      help="give up after this many seconds (default 110)")
    demo.add_argument("--state-dir", type=Path, default=None, help="keep state and logs here")
    demo.add_argument("--kubeconfig", type=Path, default=None,
                      help="use this already-running API server instead of the embedded emulator")
    return p


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    # Python keeps SIGINT ignored when it starts that way (a background job of a non-interactive shell):
    # `kill -INT` must still stop the sandbox and everything it started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return stop


def up(args: argparse.Namespace) -> int:
    versions = tuple(args.release) or (DEMO_FROM, DEMO_TO)
    if args.from_version not in versions:
        versions = (args.from_version, *versions)
    for version in versions:
        version_key(version)
    config = SandboxConfig(servers=args.servers, agents=args.agents, from_version=args.from_version,
                           versions=versions, stable=args.stable, state_dir=args.state_dir,
                           kubeconfig=args.kubeconfig, netns=args.netns)
    sandbox = Sandbox(config)
    stop = _stop_on_signals()
    try:
        sandbox.start()
        assert sandbox.channels is not None and sandbox.releases is not None
        print(f"kubeconfig:          {sandbox.kubeconfig}\n"
              f"  export KUBECONFIG={sandbox.kubeconfig}\n"
              f"coordinator status:  {sandbox.status_url}\n"
              f"release server:      {sandbox.releases.base_url}\n"
              f"channel server:      {sandbox.channels.url('stable')} (move: PUT "
              f"{sandbox.channels.base_url}/admin/channels/<name> with a version)\n"
              f"nodes:               {', '.join(sandbox.nodes)} on {args.from_version}\n"
              f"state and logs:      {sandbox.state_dir}\n"
              "Ctrl-C stops everything.", flush=True)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C / SIGTERM must not cut the teardown short and leave processes behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stopping the sandbox ...", flush=True)
        sandbox.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            return up(args)
        _stop_on_signals()
        return run_demo(servers=args.servers, agents=args.agents, timeout=args.timeout,
                        state_dir=args.state_dir, kubeconfig=args.kubeconfig)
    except KeyboardInterrupt:
        return 130
    except (SandboxError, ValueError) as exc:
        print(f"k3s-upgrade-sandbox: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
