"""The ``invguard`` command line: a thin typer layer over the library (no logic of its own).

Exit codes: 0 success / all gates pass, 1 a gate failed, 2 usage or config error, 3 target
unreachable. A user error prints a message, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    name="invguard",
    help="Find and stop model-inversion leaks: audit what a model gives away, guard it in production.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # error lines stay whole in logs
out = Console() if sys.stdout.isatty() else Console(width=160)  # tables stay readable in CI logs


def _fail(e: Exception) -> None:
    from invguard.core.errors import InvguardError

    code = e.exit_code if isinstance(e, InvguardError) else 2
    # escaped: a message such as "pip install 'invguard[synth]'" must not lose its brackets to markup
    console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
    raise typer.Exit(code)


@app.command()
def version() -> None:
    """Print the invguard version."""
    from invguard import __version__

    out.print(f"invguard {__version__}")


@app.command()
def train(
    dataset: Annotated[
        str, typer.Option(help="Dataset name (digits, mnist5k, adult) or a .npz/.csv/folder path.")
    ] = "digits",
    arch: Annotated[str, typer.Option(help="Architecture: mlp or cnn.")] = "mlp",
    recipe: Annotated[str, typer.Option(help="Training recipe: standard, overfit or quick.")] = "standard",
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    output: Annotated[Path, typer.Option("--out", "-o", help="Where to write the model file.")] = Path(
        "model.pt"
    ),
    label: Annotated[str | None, typer.Option(help="Label column, for a CSV dataset.")] = None,
    defence: Annotated[
        str | None,
        typer.Option(
            help="Defended training, e.g. 'epsilon=4 max_grad_norm=1 accountant=prv' (DP-SGD) or "
            "'weight_decay=0.001 label_smoothing=0.1 augment=shift early_stopping=5'."
        ),
    ] = None,
    history: Annotated[
        Path | None, typer.Option(help="Record the privacy spent in this store's budget ledger.")
    ] = Path(".invguard/history.db"),
    name: Annotated[
        str | None, typer.Option(help="The model's name in the ledger (default: file stem).")
    ] = None,
) -> None:
    """Train a model on the members split of a dataset and save it (optionally defended)."""
    from invguard.core.errors import InvguardError
    from invguard.workflows import train_model

    try:
        train_model(
            dataset=dataset,
            arch=arch,
            recipe=recipe,
            seed=seed,
            output=output,
            label=label,
            console=out,
            defence=defence,
            history=history,
            name=name,
        )
    except InvguardError as e:
        _fail(e)


@app.command("export-onnx")
def export_onnx(
    model: Annotated[str, typer.Argument(help="A model file from `invguard train`, or reference/NAME.")],
    output: Annotated[Path, typer.Option("--out", "-o", help="Where to write the ONNX file.")] = Path(
        "model.onnx"
    ),
) -> None:
    """Write an invguard-trained model as an ONNX file (what an app ships to a device)."""
    from invguard.core.errors import InvguardError
    from invguard.workflows import export_model_onnx

    try:
        export_model_onnx(model, output, console=out)
    except InvguardError as e:
        _fail(e)


def _audit_errors(fn: Any, stopped: str = "the audit was stopped") -> Any:
    """Run ``fn``; map invguard errors to their exit codes and an interrupt to 130, never a traceback.
    ``stopped`` says what an interrupt stopped."""
    from invguard.core.errors import InvguardError

    try:
        return fn()
    except InvguardError as e:
        _fail(e)
    except OSError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: {stopped}; no report was written[/]")
        raise typer.Exit(130) from None


@app.command()
def audit(
    config: Annotated[Path, typer.Argument(help="The audit config (YAML); see examples/audit.yaml.")],
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run the attack jobs on an existing Dask cluster, e.g. tcp://10.0.0.5:8786."),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report folder (default: output.dir of the config).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (default: CPU count).")] = None,
    no_history: Annotated[bool, typer.Option("--no-history", help="Do not record this run.")] = False,
    show_secrets: Annotated[
        bool,
        typer.Option(
            "--show-secrets",
            help="Put the strings a text extraction recovered (canaries, training text) in the reports "
            "in clear; by default each is redacted to its first characters, its length and a hash.",
        ),
    ] = False,
) -> None:
    """Run every attack of an audit config, check its gates and write the reports.

    Exit code 0: all gates pass; 1: a gate failed; 2: config or usage error; 3: target unreachable.
    """
    from invguard.audit.runner import run_audit
    from invguard.audit.summary import print_summary

    kw: dict[str, Any] = {
        "scheduler": scheduler,
        "out_dir": out_dir,
        "max_workers": workers,
        "console": console,
        "show_secrets": show_secrets,
    }
    if no_history:
        kw["history"] = False
    run = _audit_errors(lambda: run_audit(config, **kw))
    print_summary(run.results, run.paths, out)
    raise typer.Exit(run.exit_code)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results.json written by `invguard audit`.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="html, junit, markdown or json.")] = "html",
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output file (default: beside results).")
    ] = None,
) -> None:
    """Re-render a report from a results JSON (the JSON is all a report ever reads)."""
    from invguard.core.errors import ConfigError
    from invguard.report import FILENAMES, load, write_report

    def go() -> Path:
        if fmt not in FILENAMES:
            raise ConfigError(f"--format must be one of {', '.join(sorted(FILENAMES))}, got {fmt!r}")
        doc = load(results)
        return write_report(doc, fmt, output or results.with_name(FILENAMES[fmt]))

    path = _audit_errors(go)
    out.print(f"wrote {path}", highlight=False)


@app.command()
def tradeoff(
    config: Annotated[Path, typer.Argument(help="The trade-off config (YAML); see examples/tradeoff.yaml.")],
    scheduler: Annotated[
        str | None, typer.Option(help="Run the training jobs on an existing Dask cluster (tcp://HOST:PORT).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report folder (default: output.dir of the config).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes (default: CPU count).")] = None,
) -> None:
    """Train each defence setting of a sweep, attack it, and recommend the cheapest that passes.

    Exit code 0: a setting is recommended; 1: none passes every gate within the utility floor.
    """
    from invguard.defences.tradeoff import run_tradeoff

    run = _audit_errors(
        lambda: run_tradeoff(
            config, scheduler=scheduler, out_dir=out_dir, max_workers=workers, console=console
        )
    )
    out.print(run.results["recommendation"]["text"], highlight=False)
    for fmt_, path in run.paths.items():
        out.print(f"{fmt_}: {path}", highlight=False)
    raise typer.Exit(run.exit_code)


synth_app = typer.Typer(help="Leakage checks for synthetic data.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")


@synth_app.command("check")
def synth_check(
    real: Annotated[Path, typer.Option(help="The real records the generator was trained on (.csv or .npz).")],
    synthetic: Annotated[Path, typer.Option(help="The synthetic records (.csv or .npz).")],
    holdout: Annotated[
        Path | None,
        typer.Option(help="Real records the generator never saw (needed for DCR share and risks)."),
    ] = None,
    secret: Annotated[
        str | None, typer.Option(help="Column attribute inference targets (default: the last).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/synth"),
    n_attacks: Annotated[
        int | None,
        typer.Option(
            help="Records each anonymeter attack targets (default: a third of the real records, "
            "between 20 and 500).",
            min=1,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the subsamples and bootstraps.")] = 0,
) -> None:
    """DCR/NNDR against a holdout, anonymeter's risks and a membership attack; exit 1 on a leak."""
    from invguard.defences.synth import synth_check as run
    from invguard.defences.synth import verdict_text

    doc, paths = _audit_errors(
        lambda: run(
            real,
            synthetic,
            holdout,
            out_dir=out_dir,
            secret=secret,
            n_attacks=n_attacks,
            seed=seed,
            progress=lambda line: console.print(line, highlight=False, markup=False),
        ),
        stopped="the synthetic-data check was stopped",
    )
    out.print(verdict_text(doc), highlight=False)
    for fmt_, path in paths.items():
        out.print(f"{fmt_}: {path}", highlight=False)
    raise typer.Exit(1 if doc["leak"] else 0)


inventory_app = typer.Typer(
    help="The model inventory and the privacy decision checklist.", no_args_is_help=True
)
app.add_typer(inventory_app, name="inventory")


@inventory_app.command("check")
def inventory_check(
    inventory: Annotated[Path, typer.Argument(help="The inventory (YAML): models, owners, data, exposure.")],
    history: Annotated[
        Path | None, typer.Option(help="Audit history store (default: from the file).")
    ] = None,
    max_age_days: Annotated[
        float | None, typer.Option(help="Oldest acceptable audit, in days (default: from the file).")
    ] = None,
) -> None:
    """Print the tests and mitigations each model needs; exit 1 when something required is missing."""
    from rich.table import Table

    from invguard.audit.inventory import check, load_inventory

    def go() -> Any:
        inv = load_inventory(inventory)
        upd: dict[str, Any] = {}
        if history is not None:
            upd["history"] = str(history)
        if max_age_days is not None:
            upd["defaults"] = inv.defaults.model_copy(update={"max_audit_age_days": max_age_days})
        inv = inv.model_copy(update=upd)
        return check(inv)

    checks = _audit_errors(go)
    t = Table(title="privacy decision checklist", title_justify="left", show_lines=True)
    for c in ("model", "owner", "why", "tests required", "mitigations required", "last audit", "status"):
        t.add_column(c, overflow="fold")
    for c in checks:
        status = "[green]ok[/]" if c.ok else "[red]ACTION NEEDED[/]: " + "; ".join(c.missing)
        t.add_row(
            c.name,
            c.owner,
            "; ".join(c.reasons),
            ", ".join(c.tests) or "—",
            ", ".join(m.replace("|", " or ") for m in c.mitigations) or "—",
            c.last_audit,
            status,
        )
    out.print(t)
    bad = [c for c in checks if not c.ok]
    if bad:
        out.print(f"[red]{len(bad)} of {len(checks)} models miss something required[/]")
        raise typer.Exit(1)
    out.print(f"[green]all {len(checks)} models have what the checklist requires[/]")


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for the split, the training and the attacks.")] = 0,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("reports/demo"),
    workers: Annotated[int | None, typer.Option(help="Local worker processes (default: CPU count).")] = None,
) -> None:
    """Audit the bundled digits model with every attack available; reports go to reports/demo/."""
    from invguard.audit.demo import write_demo_config
    from invguard.audit.runner import run_audit
    from invguard.audit.summary import print_summary

    def go() -> Any:
        cfg = write_demo_config(out_dir, seed)
        return run_audit(cfg, out_dir=out_dir, max_workers=workers, console=console)

    run = _audit_errors(go)
    print_summary(run.results, run.paths, out)
    out.print(f"\nreport: [bold]{run.paths.get('html')}[/]", highlight=False)


# --------------------------------------------------------------------------------------------- guard

keys_app = typer.Typer(
    help="Manage the guard's API keys (only SHA-256 hashes are stored).", no_args_is_help=True
)
log_app = typer.Typer(help="Work with the guard's tamper-evident audit log.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(log_app, name="log")

_STORE = typer.Option("--store", "-s", help="The SQLite key store (auth.key_store in guard.yaml).")


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="The guard config (guard.yaml).")],
    host: Annotated[str | None, typer.Option(help="Override server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port.")] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes on one port (N > 1: limits and detection in Redis; one audit-log "
            "chain per worker, bound by a signed manifest).",
        ),
    ] = 1,
) -> None:
    """Run the guard: API keys, rate limits, output policies and an audit log in front of a model."""
    from invguard.core.errors import InvguardError
    from invguard.guard import load
    from invguard.guard.app import Guard

    try:
        cfg = load(config)
        h = host or cfg.server.host
        pt = port if port is not None else cfg.server.port
        from invguard.guard.auditlog.workers import manifest_path, worker_files

        if workers > 1 or manifest_path(cfg.audit.path).exists() or worker_files(cfg.audit.path):
            # once a manifest binds the log, every start (one worker too) is a start of the set
            from invguard.guard.workers import serve_workers

            code = serve_workers(config, cfg, h, pt, workers, log=lambda m: console.print(m, highlight=False))
            raise typer.Exit(code)
        _port_free(h, pt)  # before the model loads and the log opens: a clear exit 2, not exit 3 later
        guard = Guard(cfg)
        asgi = guard.app
    except InvguardError as e:
        _fail(e)
        return
    import uvicorn

    console.print(
        f"guard serving model {cfg.model.name!r} on http://{h}:{pt} (audit log {cfg.audit.path})",
        highlight=False,
    )
    for line in guard.startup_report:  # each detection threshold: (calibrated), (config) or (default)
        console.print(line, highlight=False, markup=False)
    uvicorn.run(
        asgi,
        host=h,
        port=pt,
        log_level="warning",
        access_log=False,
        loop="auto",
        http=getattr(asgi, "http_protocol", "auto"),  # the guard's: header deadline, per-address cap
    )


def _port_free(host: str, port: int) -> None:
    """Refuse a port another server is listening on (uvicorn would fail only after start-up)."""
    import errno
    import socket

    from invguard.core.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} is in use on {host}: stop the server holding it, or pass --port"
                ) from None
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None


guard_app = typer.Typer(help="Tune the guard.", no_args_is_help=True)
app.add_typer(guard_app, name="guard")


@guard_app.command("calibrate")
def guard_calibrate(
    config: Annotated[Path, typer.Argument(help="The guard config (guard.yaml).")],
    benign: Annotated[Path, typer.Option(help="Benign samples: a .npy/.npz file or a directory of them.")],
    fpr: Annotated[float, typer.Option(help="Target false-positive rate per request.")] = 0.001,
    out: Annotated[Path | None, typer.Option(help="Where to write (default: detection.calibration).")] = None,
) -> None:
    """Set every detection threshold from benign traffic to a target false-positive rate."""
    from invguard.core.errors import ConfigError, InvguardError
    from invguard.guard import load
    from invguard.guard.auditlog.signing import read_secret
    from invguard.guard.detect.calibrate import calibrate, load_benign, write_calibration
    from invguard.guard.keys import detect_salt_path

    try:
        cfg = load(config)
        dest = out or (Path(cfg.detection.calibration) if cfg.detection.calibration else None)
        if dest is None:
            raise ConfigError(f"{config}: detection.calibration is not set; give --out or set it")
        shape = cfg.model.input_shape
        if shape is None:
            from invguard.guard.upstream import build_model

            shape = tuple(build_model(cfg.model).input_shape)
        secret = read_secret(detect_salt_path(cfg.audit.path, cfg.detection.salt_key), "detection.salt_key")
        doc = calibrate(cfg.detection, tuple(shape), load_benign(benign, tuple(shape)), fpr, secret)
        write_calibration(doc, dest)
    except InvguardError as e:
        _fail(e)
        return
    console.print(
        f"calibrated on {doc['samples']} benign samples in {doc['streams']} streams (fpr {fpr}): {dest}",
        highlight=False,
    )
    for k, v in sorted(doc["thresholds"].items()):
        console.print(f"  {k} = {v:g}", highlight=False)


@keys_app.command("add")
def keys_add(
    role: Annotated[str, typer.Option(help="The role the key grants (a role of guard.yaml).")],
    store: Annotated[Path, _STORE] = Path("keys.db"),
    key_id: Annotated[str | None, typer.Option("--id", help="A name for the key (default: random).")] = None,
    owner: Annotated[
        str | None, typer.Option(help="Who holds the key (budgets with scope: owner are shared per owner).")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="guard.yaml: refuse roles it does not define.")
    ] = None,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from invguard.core.errors import ConfigError, InvguardError
    from invguard.guard.auth import KeyStore

    try:
        if config is not None:
            from invguard.guard import load

            roles = sorted(load(config).roles)
            if role not in roles:
                raise ConfigError(
                    f"keys add: role {role!r} is not defined in {config}; its roles are {roles}"
                )
        elif (recorded := KeyStore(store).recorded_roles()) is not None and role not in recorded:
            raise ConfigError(
                f"keys add: role {role!r} is not a role of the guard that uses {store} (its roles, "
                f"recorded when it last started, are {list(recorded)}); check with --config guard.yaml"
            )
        key, rec = KeyStore(store).add(role, key_id, owner)
    except InvguardError as e:
        _fail(e)
        return
    held = f" held by {rec.owner!r}" if rec.owner else ""
    console.print(f"key {rec.id!r} for role {rec.role!r}{held} added to {store} (shown once, store it now):")
    out.print(key, highlight=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(store: Annotated[Path, _STORE] = Path("keys.db")) -> None:
    """List the keys of a store (id, role, created, revoked, hash prefix)."""
    from invguard.guard.auth import KeyStore

    for r in KeyStore(store).list():
        state = "revoked" if r.revoked else "active"
        line = f"{r.id}\t{r.role}\t{r.created}\t{state}\tsha256:{r.sha256[:12]}\towner:{r.owner or '-'}"
        out.print(line, highlight=False)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The id of the key to revoke.")],
    store: Annotated[Path, _STORE] = Path("keys.db"),
) -> None:
    """Revoke a key; a running guard stops accepting it within a second."""
    from invguard.core.errors import InvguardError
    from invguard.guard.auth import KeyStore

    try:
        KeyStore(store).revoke(key_id)
    except InvguardError as e:
        _fail(e)
    console.print(f"key {key_id!r} revoked")


@log_app.command("verify")
def log_verify(
    file: Annotated[Path, typer.Argument(help="The audit log (its rotated files are checked too).")],
    public_key: Annotated[
        Path | None, typer.Option(help="Pin the Ed25519 key the checkpoints must be signed with (PEM).")
    ] = None,
    chain_key: Annotated[
        Path | None,
        typer.Option(help="The chain key (audit.chain_key): also checks records after the last checkpoint."),
    ] = None,
    head: Annotated[
        Path | None, typer.Option(help="A saved head checkpoint (default: FILE.head if present).")
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            help="A witness of the signed heads (file:PATH, redis://host:port/db#key, http(s)://...); "
            "the log must not be behind or inconsistent with it. Repeatable."
        ),
    ] = None,
    trusted: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Start at this saved signed checkpoint instead of the genesis (older files archived).",
        ),
    ] = None,
    trust_embedded_key: Annotated[
        bool,
        typer.Option(
            "--trust-embedded-key",
            help="Check signatures against the key written in the log (a re-signed log passes).",
        ),
    ] = False,
    allow_missing_head: Annotated[
        bool,
        typer.Option(
            "--allow-missing-head", help="Accept a log without a head checkpoint (truncation goes unseen)."
        ),
    ] = False,
) -> None:
    """Check the keyed hash chain, the signed checkpoints, the head and the witnesses; name the
    first bad record and the exact range verified. Exit 1 if bad.

    A log served by several workers (FILE.workers.json beside it) is checked as a whole: the signed
    manifest, every worker's chain present and in its place, each verifying; with worker chains
    beside FILE and no manifest, verification fails.

    Pin the guard's signing key with --public-key (required unless --trust-embedded-key)."""
    from invguard.core.errors import ConfigError, InvguardError
    from invguard.guard.auditlog import load_chain_key, load_public_key_hex, verify, witness_from_spec
    from invguard.guard.auditlog.workers import (
        WorkersReport,
        manifest_path,
        single_chain_problem,
        verify_workers,
    )

    rep: Any
    try:
        pk = load_public_key_hex(public_key) if public_key is not None else None
        ck = load_chain_key(chain_key, create=False) if chain_key is not None else None
        if manifest_path(file).exists():
            if head is not None or trusted is not None:
                raise ConfigError(
                    f"--head and --from name a checkpoint of one chain, and {file} is written by several "
                    f"workers (manifest {manifest_path(file)}): verify that chain alone (invguard log "
                    "verify <its .wN file>)"
                )
            rep = verify_workers(
                file,
                public_key=pk,
                chain_key=ck,
                witnesses=witness or (),
                trust_embedded_key=trust_embedded_key,
                allow_missing_head=allow_missing_head,
            )
        elif (problem := single_chain_problem(file)) is not None:
            rep = WorkersReport(manifest=str(manifest_path(file))).fail(problem)
        else:
            rep = verify(
                file,
                public_key=pk,
                chain_key=ck,
                head=head,
                trusted=trusted,
                witnesses=[witness_from_spec(w) for w in witness or ()],
                trust_embedded_key=trust_embedded_key,
                allow_missing_head=allow_missing_head,
            )
    except InvguardError as e:
        _fail(e)
        return
    for w in rep.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if not rep.ok:
        console.print(f"[bold red]{rep.summary()}[/]", highlight=False)
        raise typer.Exit(1)
    out.print(rep.summary(), highlight=False)


@log_app.command("timeline")
def log_timeline(
    file: Annotated[Path, typer.Argument(help="The audit log (its rotated files are read too).")],
    client: Annotated[list[str] | None, typer.Option(help="A client id (repeatable).")] = None,
    input_hmac: Annotated[
        str | None,
        typer.Option(
            help="Every client that sent this input: its HMAC (hex), or a unique prefix of 8+ digits."
        ),
    ] = None,
    incident: Annotated[int | None, typer.Option(help="The timeline behind this incident.")] = None,
    incidents: Annotated[Path | None, typer.Option(help="The incident store, for --incident.")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="guard.yaml, for --incident.")] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="Start time, ISO 8601 (2026-12-01T23:00:00Z).")
    ] = None,
    until: Annotated[str | None, typer.Option("--to", help="End time, ISO 8601.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
    public_key: Annotated[
        Path | None, typer.Option(help="Pin the Ed25519 key of the checkpoints (PEM).")
    ] = None,
    chain_key: Annotated[
        Path | None, typer.Option(help="The chain key: verifies records after the last checkpoint.")
    ] = None,
    head: Annotated[Path | None, typer.Option(help="A saved head checkpoint (default: FILE.head).")] = None,
    trusted: Annotated[
        Path | None, typer.Option(help="Start at this saved signed checkpoint (older files archived).")
    ] = None,
    trust_embedded_key: Annotated[
        bool, typer.Option("--trust-embedded-key", help="Accept the key written in the log.")
    ] = False,
    allow_missing_head: Annotated[
        bool, typer.Option("--allow-missing-head", help="Accept a log without a head.")
    ] = False,
) -> None:
    """Replay a client's requests from the verified log (refused if the range does not verify)."""
    from invguard.core.errors import ConfigError, InvguardError
    from invguard.guard import timeline as tl
    from invguard.guard.auditlog import load_chain_key, load_public_key_hex

    try:
        if fmt not in ("table", "csv", "json"):
            raise ConfigError(f"--format must be table, csv or json, got {fmt!r}")
        q: dict[str, Any] = {"clients": list(client or ()), "input_hmac": input_hmac}
        if incident is not None:
            from invguard.guard.incidents import IncidentStore, open_store

            store = IncidentStore(incidents) if incidents is not None else open_store(None, config)
            q.update(tl.for_incident(store, incident))
            q["clients"] += list(client or ())
        if since is not None:
            q["since"] = tl.parse_time(since, "--from")
        if until is not None:
            q["until"] = tl.parse_time(until, "--to")
        t = tl.build(
            file,
            public_key=load_public_key_hex(public_key) if public_key is not None else None,
            chain_key=load_chain_key(chain_key, create=False) if chain_key is not None else None,
            head=head,
            trusted=trusted,
            trust_embedded_key=trust_embedded_key,
            allow_missing_head=allow_missing_head,
            **q,
        )
    except InvguardError as e:
        _fail(e)
        return
    console.print(f"verified: {t.verified}", highlight=False)
    for w in t.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if fmt == "json":
        sys.stdout.write(t.to_json() + "\n")
    elif fmt == "csv":
        sys.stdout.write(t.to_csv())
    else:
        from rich.table import Table

        table = Table(
            title=f"{len(t.entries)} records of {', '.join(t.clients) or 'no client'}", title_justify="left"
        )
        for c in t.columns:
            table.add_column(c, overflow="fold")
        for entry in t.entries:
            table.add_row(*("" if v is None else str(v) for v in entry.row(t.columns)))
        out.print(table)


# ----------------------------------------------------------------------------------------- incidents

incidents_app = typer.Typer(
    help="Privacy incidents: list, show, acknowledge, resolve (the store of incidents.store).",
    no_args_is_help=True,
)
app.add_typer(incidents_app, name="incidents")
_ISTORE = typer.Option("--store", "-s", help="The incident store (default: incidents.store of --config).")
_ICONFIG = typer.Option("--config", "-c", help="guard.yaml, to find the incident store.")


def _incidents(store: Path | None, config: Path | None) -> Any:
    from invguard.guard.incidents import IncidentStore, open_store

    try:
        return open_store(store, config) if store is None else IncidentStore(store)
    except Exception as e:
        _fail(e)


def _incident_out(rows: list[dict[str, Any]], fmt: str, columns: tuple[str, ...]) -> None:
    import json as _json

    from rich.table import Table

    if fmt == "json":
        out.print_json(_json.dumps(rows))
        return
    if fmt != "table":
        _fail(ValueError(f"--format must be table or json, got {fmt!r}"))
    t = Table(show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    out.print(t)


@incidents_app.command("list")
def incidents_list(
    state: Annotated[
        str, typer.Option(help="active (open or acknowledged), open, acknowledged, resolved or all.")
    ] = "active",
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    client: Annotated[str | None, typer.Option(help="Only incidents involving this client id.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """List incidents, newest first."""
    from invguard.core.errors import InvguardError

    s = _incidents(store, config)
    try:
        rows = [
            i.to_dict() for i in s.find(state=None if state == "all" else state, model=model, client=client)
        ]
    except InvguardError as e:
        _fail(e)
        return
    for r in rows:
        r["clients"] = ", ".join(r["clients"])
    cols = (
        "id",
        "state",
        "severity",
        "source",
        "detector",
        "model",
        "model_version",
        "clients",
        "opened_at_iso",
        "title",
    )
    _incident_out(rows, fmt, cols)


@incidents_app.command("show")
def incidents_show(
    incident_id: Annotated[int, typer.Argument(help="The incident number.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """An incident with its evidence, mitigations and transitions."""
    import json as _json

    from invguard.core.errors import InvguardError

    s = _incidents(store, config)
    try:
        inc, trans = s.get(incident_id), s.transitions(incident_id)
    except InvguardError as e:
        _fail(e)
        return
    doc = inc.to_dict() | {"transitions": [t.to_dict() for t in trans]}
    if fmt == "json":
        out.print_json(_json.dumps(doc))
        return
    for k in (
        "id",
        "state",
        "severity",
        "title",
        "source",
        "detector",
        "model",
        "model_version",
        "clients",
        "keys",
        "detections",
        "first_seen_iso",
        "last_seen_iso",
        "opened_at_iso",
        "acked_at_iso",
        "acked_by",
        "resolved_at_iso",
        "resolved_by",
        "resolution",
    ):
        v = doc[k]
        out.print(
            f"{k:>16}: {', '.join(v) if isinstance(v, list) else ('' if v is None else v)}", highlight=False
        )
    out.print(f"{'evidence':>16}: {_json.dumps(doc['evidence'], sort_keys=True)}", highlight=False)
    for m in doc["mitigations"]:
        out.print(f"{'mitigation':>16}: {_json.dumps(m, sort_keys=True)}", highlight=False)
    _incident_out([t.to_dict() for t in trans], "table", ("at_iso", "action", "actor", "note"))


@incidents_app.command("ack")
def incidents_ack(
    incident_id: Annotated[int, typer.Argument(help="The incident number.")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges (recorded with the transition).")],
    note: Annotated[str, typer.Option(help="A note for the record.")] = "",
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """open -> acknowledged (the guard writes the audit-log record and posts the webhook)."""
    from invguard.core.errors import InvguardError

    s = _incidents(store, config)
    try:
        inc = s.acknowledge(incident_id, by, note)
    except InvguardError as e:
        _fail(e)
        return
    out.print(
        f"incident #{inc.id} acknowledged by {by} after {inc.time_to_acknowledge:.0f} s", highlight=False
    )


@incidents_app.command("resolve")
def incidents_resolve(
    incident_id: Annotated[int, typer.Argument(help="The incident number.")],
    by: Annotated[str, typer.Option("--by", help="Who resolves (recorded with the transition).")],
    note: Annotated[str, typer.Option(help="What was found and done (required).")],
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """open | acknowledged -> resolved."""
    from invguard.core.errors import InvguardError

    s = _incidents(store, config)
    try:
        inc = s.resolve(incident_id, by, note)
    except InvguardError as e:
        _fail(e)
        return
    out.print(f"incident #{inc.id} resolved by {by} after {inc.time_to_resolve:.0f} s", highlight=False)


@incidents_app.command("open")
def incidents_open(
    title: Annotated[str, typer.Option(help="What happened, in one line.")],
    by: Annotated[str, typer.Option("--by", help="Who opens it.")],
    model: Annotated[str, typer.Option(help="The model concerned.")],
    model_version: Annotated[str, typer.Option(help="Its version.")] = "unversioned",
    client: Annotated[list[str] | None, typer.Option(help="A client id involved (repeatable).")] = None,
    severity: Annotated[str, typer.Option(help="page or ticket.")] = "page",
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """Open an incident by hand."""
    from invguard.core.errors import InvguardError
    from invguard.guard.incidents import Detection

    s = _incidents(store, config)
    d = Detection("manual", f"manual:{by}", title, model, model_version, severity, clients=client or ())
    try:
        inc, _ = s.open(d, actor=by)
    except InvguardError as e:
        _fail(e)
        return
    out.print(f"incident #{inc.id} opened", highlight=False)


@incidents_app.command("stats")
def incidents_stats(
    days: Annotated[float, typer.Option(help="The period: the last DAYS days.")] = 30.0,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """Incidents of a period, MTTA and MTTR (M8)."""
    s = _incidents(store, config)
    st = s.stats(since=s.clock() - days * 86400).to_dict()
    for k in ("mtta_seconds", "mttr_seconds", "ttr_p50_seconds", "ttr_max_seconds"):
        st[k.replace("_seconds", "_hours")] = None if st[k] is None else round(st[k] / 3600, 3)
    cols = (
        "since_iso",
        "until_iso",
        "opened",
        "acknowledged",
        "resolved",
        "open_now",
        "mtta_hours",
        "mttr_hours",
        "ttr_p50_hours",
        "ttr_max_hours",
    )
    _incident_out([st], fmt, cols)


@incidents_app.command("sync-history")
def incidents_sync_history(
    history: Annotated[
        Path | None,
        typer.Option(
            help="The audit history store (default: incidents.history of --config, resolved "
            "against the config's directory as the guard does; without --config .invguard/history.db)."
        ),
    ] = None,
    store: Annotated[Path | None, _ISTORE] = None,
    config: Annotated[Path | None, _ICONFIG] = None,
) -> None:
    """Open an incident for every failed audit gate of the history not seen yet."""
    from invguard.core.errors import ConfigError, InvguardError

    s = _incidents(store, config)
    try:
        if history is None and config is not None:
            from invguard.guard.config import load

            inc = load(config).incidents
            if inc is None or inc.history is None:
                raise ConfigError(
                    f"{config}: incidents.history is not set (the audit history the guard reads, "
                    "e.g. history: .invguard/history.db); set it or pass --history"
                )
            history = Path(inc.history)
        elif history is None:
            history = Path(".invguard/history.db")
        opened = s.open_from_history(history)
    except InvguardError as e:
        _fail(e)
        return
    for i in opened:
        out.print(f"incident #{i.id} opened: {i.title}", highlight=False)
    out.print(f"{len(opened)} incident(s) opened from {history}", highlight=False)


# -------------------------------------------------------------------------------------------- canary

canary_app = typer.Typer(
    help="The guard's canary version: its state, re-enable it or roll it back by hand.",
    no_args_is_help=True,
)
app.add_typer(canary_app, name="canary")
_CCONFIG = typer.Option("--config", "-c", help="guard.yaml with a canary section.")


def _canary(config: Path) -> Any:
    from invguard.guard.canary import open_state

    try:
        return open_state(config)
    except Exception as e:
        _fail(e)


@canary_app.command("status")
def canary_status(
    config: Annotated[Path, _CCONFIG],
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """The canary's state, who changed it and why, and its last comparison with the stable version."""
    import json as _json

    from invguard.core.errors import InvguardError

    store, model = _canary(config)
    try:
        st = store.require(model)
    except InvguardError as e:
        _fail(e)
        return
    doc = st.to_dict()
    if fmt == "json":
        out.print_json(_json.dumps(doc))
        return
    for k in ("model", "stable_version", "canary_version", "state", "since_iso", "actor", "reason"):
        out.print(f"{k:>16}: {doc[k]}", highlight=False)
    ev = st.evaluation
    if ev is None:
        out.print(f"{'comparison':>16}: none yet", highlight=False)
        return
    out.print(
        f"{'compared at':>16}: {doc['evaluated_at_iso']} over {ev['window_seconds']:g} s", highlight=False
    )
    for sli, d in ev["slis"].items():
        s, c = d["stable"], d["canary"]
        rates = f"{c['bad']}/{c['total']} on {c['version']} vs {s['bad']}/{s['total']} on {s['version']}"
        if d.get("decided"):
            verdict = f"lower bound {d['lower']:.4f} {'>' if d['breach'] else '<='} margin {d['margin']:g}"
        else:
            verdict = d["why"]
        out.print(f"{sli:>16}: {rates}; {verdict}", highlight=False)
    a = ev.get("audit")
    audit = "no run in the history" if a is None else ("passed" if a["passed"] else f"FAILED: {a['summary']}")
    out.print(f"{'latest audit':>16}: {ev['audit_model']}: {audit}", highlight=False)


def _canary_change(config: Path, action: str, by: str, note: str) -> None:
    from invguard.core.errors import InvguardError

    store, model = _canary(config)
    try:
        st = store.enable(model, by, note) if action == "enable" else store.roll_back_by_hand(model, by, note)
    except InvguardError as e:
        _fail(e)
        return
    out.print(
        f"canary {st.canary_version} of {model}: {st.state} (the guard follows within a second)",
        highlight=False,
    )


@canary_app.command("enable")
def canary_enable(
    config: Annotated[Path, _CCONFIG],
    by: Annotated[str, typer.Option("--by", help="Who re-enables it (recorded and audited).")],
    note: Annotated[str, typer.Option(help="Why it is safe again (required).")],
) -> None:
    """rolled back -> active: the canary serves its share again, compared over a fresh window."""
    _canary_change(config, "enable", by, note)


@canary_app.command("rollback")
def canary_rollback(
    config: Annotated[Path, _CCONFIG],
    by: Annotated[str, typer.Option("--by", help="Who rolls it back (recorded and audited).")],
    note: Annotated[str, typer.Option(help="Why (required).")],
) -> None:
    """active -> rolled back, by hand: every client gets the stable version."""
    _canary_change(config, "rollback", by, note)


ops_app = typer.Typer(help="Operations files that ship with the guard.", no_args_is_help=True)
app.add_typer(ops_app, name="ops")


@ops_app.command("export")
def ops_export(
    out_dir: Annotated[Path, typer.Argument(help="Where to write prometheus/, grafana/ and runbooks/.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="guard.yaml: its slos (default: M2, audit fidelity)."),
    ] = None,
    runbook_base: Annotated[
        str | None,
        typer.Option(help="URL where the runbooks are served (default: file:// URL of DIR/runbooks)."),
    ] = None,
) -> None:
    """Write Prometheus rules, three Grafana dashboards and the runbooks."""
    from invguard.core.errors import InvguardError
    from invguard.guard.ops import export

    try:
        slos: Any = ()
        if config is not None:
            from invguard.guard import load

            slos = load(config).slos
        files = export(out_dir, slos=slos, runbook_base=runbook_base)
    except InvguardError as e:
        _fail(e)
        return
    for f in files:
        out.print(f"wrote {f}", highlight=False)


def main() -> None:
    """Entry point of the ``invguard`` script.

    User errors are reported by the commands (exit 2 or 3). Anything else is a bug: it gets a
    one-line message and exit code 4, and the traceback with ``INVGUARD_DEBUG=1``.
    """
    import os

    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(130)
    except OSError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
        sys.exit(2)
    except Exception as e:
        if os.environ.get("INVGUARD_DEBUG"):
            raise
        console.print(
            f"[bold red]internal error[/] ({type(e).__name__}: {e}). This is a bug in invguard; rerun with "
            "INVGUARD_DEBUG=1 for the traceback and please report it.",
            highlight=False,
        )
        sys.exit(4)


if __name__ == "__main__":
    main()
