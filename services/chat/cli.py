"""`chat-admin`: the operators' command line for batch regeneration, over the gateway's HTTP API.

    chat-admin regenerate --agent 3 [--conversation 12 ...] [--since 2026-11-01] [--until ...]
                          [--concurrency 8] [--max-tokens N] [--max-cost X] [--key K]
                          [--dry-run] [--yes]
    chat-admin batches                      # the latest batches and their progress
    chat-admin follow ID                    # a batch's progress bar until it ends
    chat-admin cancel ID
    chat-admin resume ID [--max-tokens N] [--max-cost X] [--concurrency N] [--retry-failed]

`regenerate` always asks for a dry run first (how many replies, estimated tokens and cost),
then starts the batch and shows its progress. The batch runs in the platform, not in this
command: Ctrl-C (or a crash) only detaches, and running the same command again attaches to the
same batch (its key is the selection's) instead of starting another.

Connection: `--url` or CHAT_API_URL (default http://127.0.0.1:8000); an administrator's token
from `--token` or CHAT_ADMIN_TOKEN, else a login with ADMIN_EMAIL and ADMIN_PASSWORD.

Exit status: 0 the batch completed without failures (or a dry run / query succeeded), 1 it
ended with failed or cancelled replies, 2 a usage or API error, 3 its budget stopped it,
130 detached by Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
from tqdm import tqdm

POLL_SECONDS = 0.5
BATCHES = "/chat/admin/regenerations"
EXIT_FAILURES, EXIT_ERROR, EXIT_BUDGET, EXIT_DETACHED = 1, 2, 3, 130


class CliError(Exception):
    """A message for the operator; the command exits with status 2."""


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=60.0, trust_env=False)
        self._token = token

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            self._token = self._log_in()
        return {"Authorization": f"Bearer {self._token}"}

    def _log_in(self) -> str:
        email, password = os.environ.get("ADMIN_EMAIL"), os.environ.get("ADMIN_PASSWORD")
        if not email or not password:
            raise CliError(
                "no credentials: pass --token, or set CHAT_ADMIN_TOKEN, "
                "or ADMIN_EMAIL and ADMIN_PASSWORD"
            )
        data = self._data(
            self._http.post("/auth/login", json={"email": email, "password": password})
        )
        return str(data["access_token"])

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        try:
            response = self._http.request(method, path, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach {self._http.base_url}: {exc}") from exc
        return response.status_code, self._data(response)

    @staticmethod
    def _data(response: httpx.Response) -> Any:
        try:
            envelope = response.json()
        except ValueError as exc:
            raise CliError(f"HTTP {response.status_code}: not a JSON answer") from exc
        if response.status_code >= 400 or not envelope.get("success"):
            error = envelope.get("error") or {}
            details = error.get("details")
            extra = f" ({details})" if details else ""
            raise CliError(
                f"HTTP {response.status_code} {error.get('code', '')}: "
                f"{envelope.get('message', '')}{extra}"
            )
        return envelope["data"]


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.agent is not None:
        body["agent_id"] = args.agent
    if args.conversation:
        body["conversation_ids"] = args.conversation
    if args.since:
        body["created_after"] = args.since
    if args.until:
        body["created_before"] = args.until
    for name in ("concurrency", "max_tokens", "max_cost", "key"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    return body


def _money(value: float) -> str:
    return f"{value:,.6f}".rstrip("0").rstrip(".")


def regenerate(api: Api, args: argparse.Namespace) -> int:
    body = _selection(args)
    _, estimate = api.call("POST", BATCHES, {**body, "dry_run": True})
    print(
        f"Selected {estimate['replies']:,} replies in {estimate['conversations']:,} "
        f"conversations of {estimate['users']:,} users; estimated "
        f"{estimate['estimated_tokens']:,} tokens, cost {_money(estimate['estimated_cost'])} "
        f"(batch key {estimate['key']})"
    )
    if not estimate["within_budget"]:
        print("The estimate exceeds the budget: the batch will stop when the budget is used.")
    if args.dry_run:
        return 0
    if estimate["replies"] == 0:
        print("Nothing to regenerate.")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError("not a terminal: add --yes to start the batch without a question")
        if input("Start the batch? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Not started.")
            return 0
    status, batch = api.call("POST", BATCHES, body)
    if status == 201:
        print(f"Batch {batch['id']} started (concurrency {batch['concurrency']}).")
    else:
        print(f"Batch {batch['id']} already exists for this key ({batch['status']}); following it.")
    return follow(api, batch["id"], quiet=args.no_progress)


def follow(api: Api, batch_id: int, *, quiet: bool = False) -> int:
    """Shows the batch's progress until it ends; Ctrl-C detaches (the batch goes on)."""
    _, batch = api.call("GET", f"{BATCHES}/{batch_id}")
    bar = tqdm(total=batch["progress"]["total"], unit="reply", disable=quiet, dynamic_ncols=True)
    try:
        while True:
            progress = batch["progress"]
            bar.total = progress["total"]
            bar.n = progress["done"] + progress["failed"] + progress["cancelled"]
            eta = progress["eta_seconds"]
            bar.set_postfix(
                failed=progress["failed"],
                in_flight=progress["in_flight"],
                remaining=progress["remaining"],
                eta="?" if eta is None else f"{eta:.0f}s",
                refresh=False,
            )
            bar.refresh()
            if batch["status"] != "running":
                break
            time.sleep(POLL_SECONDS)  # the refresh period of the bar
            _, batch = api.call("GET", f"{BATCHES}/{batch_id}")
    except KeyboardInterrupt:
        bar.close()
        print(
            f"\nDetached. Batch {batch_id} keeps running; follow it again with "
            f"`chat-admin follow {batch_id}` or by running the same command."
        )
        return EXIT_DETACHED
    bar.close()
    return _summary(batch)


def _summary(batch: dict[str, Any]) -> int:
    p = batch["progress"]
    print(
        f"Batch {batch['id']} {batch['status']}: {p['done']:,} regenerated, {p['failed']:,} "
        f"failed, {p['cancelled']:,} cancelled, {p['remaining']:,} remaining of {p['total']:,}; "
        f"{p['tokens_used']:,} tokens, cost {_money(p['cost_used'])}, "
        f"{p['elapsed_seconds']:.1f} s"
    )
    if batch["status"] == "budget_exhausted":
        print(f"Raise the budget to go on: chat-admin resume {batch['id']} --max-tokens N")
        return EXIT_BUDGET
    if batch["status"] == "running":
        return 0
    return EXIT_FAILURES if p["failed"] or p["cancelled"] or p["remaining"] else 0


def list_batches(api: Api, args: argparse.Namespace) -> int:
    _, page = api.call("GET", f"{BATCHES}?limit={args.limit}")
    for batch in page["batches"]:
        p = batch["progress"]
        print(
            f"{batch['id']:>6}  {batch['status']:<16} {p['done']:>7,}/{p['total']:<7,} "
            f"failed {p['failed']:<5,} {batch['key']}  {batch['selection']}"
        )
    print(f"{page['total']} batches")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chat-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("CHAT_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--token", default=os.environ.get("CHAT_ADMIN_TOKEN"))
    commands = parser.add_subparsers(dest="command", required=True)

    regen = commands.add_parser("regenerate", help="re-generate the agent replies selected")
    regen.add_argument("--agent", type=int, help="replies by this agent")
    regen.add_argument("--conversation", type=int, action="append", help="repeatable")
    regen.add_argument("--since", help="replies created at or after (ISO 8601)")
    regen.add_argument("--until", help="replies created before (ISO 8601)")
    regen.add_argument("--concurrency", type=int, help="model calls at once (default 8)")
    regen.add_argument("--max-tokens", type=int, help="token budget")
    regen.add_argument("--max-cost", type=float, help="cost budget")
    regen.add_argument("--key", help="the batch's identity (default: from the selection)")
    regen.add_argument("--dry-run", action="store_true", help="count and estimate only")
    regen.add_argument("--yes", "-y", action="store_true", help="start without asking")
    regen.add_argument("--no-progress", action="store_true", help="no progress bar")

    commands.add_parser("batches", help="the latest batches").add_argument(
        "--limit", type=int, default=20
    )
    follow_cmd = commands.add_parser("follow", help="a batch's progress until it ends")
    follow_cmd.add_argument("batch_id", type=int)
    cancel = commands.add_parser("cancel", help="stop a batch")
    cancel.add_argument("batch_id", type=int)
    resume = commands.add_parser("resume", help="run a stopped batch again, then follow it")
    resume.add_argument("batch_id", type=int)
    resume.add_argument("--concurrency", type=int)
    resume.add_argument("--max-tokens", type=int)
    resume.add_argument("--max-cost", type=float)
    resume.add_argument("--retry-failed", action="store_true")

    args = parser.parse_args(argv)
    api = Api(args.url, args.token)
    try:
        if args.command == "regenerate":
            return regenerate(api, args)
        if args.command == "batches":
            return list_batches(api, args)
        if args.command == "follow":
            return follow(api, args.batch_id)
        if args.command == "cancel":
            _, batch = api.call("POST", f"{BATCHES}/{args.batch_id}/cancel")
            _summary(batch)
            return 0
        body = {
            name: getattr(args, name)
            for name in ("concurrency", "max_tokens", "max_cost")
            if getattr(args, name) is not None
        }
        if args.retry_failed:
            body["retry_failed"] = True
        api.call("POST", f"{BATCHES}/{args.batch_id}/resume", body)
        return follow(api, args.batch_id)
    except CliError as exc:
        print(f"chat-admin: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
