"""padim-mlops: the command line of the product (data, retraining, registry, serving)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from padim_plugin.runtime import FORMATS

from .output import quiet_libraries

if TYPE_CHECKING:
    from .config import LineParams
    from .data.store import DataVersion
    from .registry.audit import Event

# the embedded Prefect server must not try to phone home from machines without internet
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as error:
        # a KeyError's str() is its repr; the message reads better without the quotes
        message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
        print(f"error: {message}", file=sys.stderr)
        return 1


def _line_name(text: str) -> str:
    """argparse type of a product line argument: a bad name is a usage error, before any work."""
    from .data.validation import check_line_name

    try:
        return check_line_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _at_least(minimum: int) -> Callable[[str], int]:
    """argparse type of a whole number >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="padim-mlops", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="project folder holding params.yaml, .dvc/ and data/ (default: .)")
    parser.add_argument("--verbose", action="store_true",
                        help="show every library's log lines and warnings, not only padim's progress")
    commands = parser.add_subparsers(title="commands")

    data = commands.add_parser("data", help="version product-line data with DVC").add_subparsers(
        title="data commands")
    add = data.add_parser("add", help="validate, version and push a product line's images",
                          description="Roles (train, validation, test) follow data.split in params.yaml.")
    add.add_argument("line", type=_line_name, help="product line name (letters, digits, '_', '-')")
    add.add_argument("path", type=Path, nargs="?", help="a folder in MVTec AD layout")
    add.add_argument("--normal", type=Path, help="folder of normal images (instead of PATH)")
    add.add_argument("--defects", type=Path, help="folder of defect images, flat or one folder per kind")
    add.add_argument("--masks", type=Path, help="optional masks named <stem>_mask.* or <stem>.*")
    add.add_argument("--append", action="store_true",
                     help="new version = the current one plus these images (existing roles kept)")
    add.add_argument("--replace", action="store_true",
                     help="with --append: an image whose label/name exists with other content replaces it")
    add.add_argument("--no-commit", action="store_true", help="leave the .dvc pointer uncommitted")
    add.add_argument("--create-remote", action="store_true",
                     help="start a new DVC remote where none exists yet (a missing folder is an error"
                     " otherwise)")
    add.set_defaults(run=_data_add)
    demo = data.add_parser("demo", help="generate and add the three demo product lines")
    demo.set_defaults(run=_data_demo)
    check = data.add_parser("validate", help="check a folder without adding it")
    check.add_argument("path", type=Path)
    check.add_argument("--min-train", type=_at_least(0), help="default: data.min_train_images in params.yaml")
    check.add_argument("--min-validation", type=_at_least(0),
                       help="default: data.min_validation_images in params.yaml")
    check.set_defaults(run=_data_validate)
    pull = data.add_parser("pull", help="materialise a line's data at a git revision")
    pull.add_argument("line", type=_line_name)
    pull.add_argument("--rev", help="git revision (default HEAD)")
    pull.set_defaults(run=_data_pull)
    diff = data.add_parser("diff", help="images added, removed, changed per role between two versions")
    diff.add_argument("line", type=_line_name)
    diff.add_argument("rev_a", help="git revision of the older version")
    diff.add_argument("rev_b", nargs="?", default="HEAD", help="git revision of the newer (default HEAD)")
    diff.set_defaults(run=_data_diff)
    retrain = commands.add_parser("retrain", help="retrain product lines (all in params.yaml by default)")
    retrain.add_argument("lines", nargs="*", type=_line_name, help="product lines (default: all)")
    retrain.add_argument("--rev", help="git revision of the data (default HEAD)")
    retrain.add_argument("--dask-address", help="run the lines on this Dask scheduler (tcp://...)")
    retrain.add_argument("--parallel", type=_at_least(1), default=2,
                         help="lines at once, locally (default 2)")
    retrain.add_argument("--allow-dirty", action="store_true",
                         help="run uncommitted params.yaml or code changes (the versions are marked dirty and"
                         " never promoted automatically)")
    retrain.set_defaults(run=_retrain)

    tune = commands.add_parser("tune", help="choose a line's accuracy options on its validation split",
                               description="Scores a grid of options (channel reduction, aligned maps,"
                               " pooling, image score) on the line's validation images, logs it to MLflow"
                               " and writes the best into the line's params.yaml entry.")
    tune.add_argument("line", type=_line_name, help="product line name")
    tune.add_argument("--rev", help="git revision of the data (default HEAD)")
    tune.add_argument("--dry-run", action="store_true",
                      help="score and log the grid; leave params.yaml alone")
    tune.set_defaults(run=_tune)

    demo = commands.add_parser("demo", help="demo data + retrain all lines, on the embedded defaults")
    demo.set_defaults(run=_demo)

    predict = commands.add_parser("predict", help="score images with a line's champion model")
    predict.add_argument("line", type=_line_name)
    predict.add_argument("images", nargs="+", type=Path, help="image files or folders")
    predict.add_argument("--out", type=Path, required=True, help="folder for scores.csv and heatmaps")
    predict.add_argument("--alias", default="champion", help="registry alias (default champion)")
    predict.add_argument("--batch-size", type=_at_least(1), default=8,
                         help="images per model call (default 8)")
    predict.set_defaults(run=_predict)

    export = commands.add_parser("export", help="export a line's model to ONNX or OpenVINO, checked against"
                                 " it")
    export.add_argument("line", type=_line_name)
    export.add_argument("--format", dest="export_format", choices=FORMATS, required=True)
    export.add_argument("--alias", default="champion", help="registry alias (default champion)")
    export.add_argument("--out", type=Path, default=Path("exports"), help="folder for the export (default"
                        " exports/)")
    export.add_argument("--input-size", type=_at_least(1), nargs=2, metavar=("HEIGHT", "WIDTH"),
                        help="fixed input size (default the model's image size; the graph resizes)")
    export.set_defaults(run=_export)

    review = commands.add_parser("review", help="what operators should look at: flagged images and those"
                                 " nearest the threshold, from the line's production log")
    review.add_argument("line", type=_line_name)
    review.add_argument("--since", help="only images scored since then: 24h, 7d or an ISO date or time")
    review.add_argument("--limit", type=_at_least(1), default=20, help="images of each kind (default 20)")
    review.add_argument("--out", type=Path, help="write the review sheet (CSV with a verdict column) here")
    review.set_defaults(run=_review)

    monitor = commands.add_parser("monitor", help="judge the champion's production window against its"
                                  " reference: alarm rate, score shift, input drift (ok, warn or drift)")
    monitor.add_argument("line", type=_line_name)
    monitor.add_argument("--since", default="24h", help="the window: 24h, 7d or an ISO date or time"
                         " (default 24h)")
    monitor.set_defaults(run=_monitor)

    feedback = commands.add_parser("feedback", help="add operators' verdicts (a filled review sheet) to the"
                                   " line's data as its next version, with their provenance")
    feedback.add_argument("line", type=_line_name)
    feedback.add_argument("sheet", type=Path, help="CSV: image (path or digest) or image_digest, verdict"
                          " (normal or defect), optional defect_kind and reviewed_by")
    feedback.add_argument("--by", help="who reviewed, for rows without reviewed_by (default: you)")
    feedback.set_defaults(run=_feedback)

    promote = commands.add_parser("promote", help="make a model version the line's champion (recorded)")
    promote.add_argument("line", type=_line_name)
    promote.add_argument("version")
    promote.add_argument("--reason", required=True, help="why, for the audit trail")
    promote.add_argument("--override-gates", action="store_true",
                         help="promote a version that failed its gates (the gates it failed are recorded)")
    promote.set_defaults(run=_promote)

    rollback = commands.add_parser("rollback", help="give @champion back to the champion it replaced")
    rollback.add_argument("line", type=_line_name)
    rollback.add_argument("--reason", required=True, help="why, for the audit trail")
    rollback.set_defaults(run=_rollback)

    demote = commands.add_parser("demote", help="remove @champion: the line has no champion afterwards")
    demote.add_argument("line", type=_line_name)
    demote.add_argument("--reason", required=True, help="why, for the audit trail")
    demote.set_defaults(run=_demote)

    for name, verb in (("approve", "promote"), ("reject", "refuse")):
        answer = commands.add_parser(name, help=f"{verb} the version waiting for approval"
                                     " (promotion: approval)")
        answer.add_argument("line", type=_line_name)
        answer.add_argument("version")
        answer.add_argument("--reason", required=True, help="why, for the audit trail")
        answer.set_defaults(run=_answer, approve=name == "approve")

    history = commands.add_parser("history", help="a line's audit trail: every decision, who, when, why")
    history.add_argument("line", type=_line_name)
    history.set_defaults(run=_history)

    status = commands.add_parser("status", help="champion, challenger and pending version of each line")
    status.add_argument("lines", nargs="*", type=_line_name, help="product lines (default: all)")
    status.set_defaults(run=_status)

    automations = commands.add_parser("automations", help="Prefect automations: webhooks on failed retrains,"
                                      " promotions, approvals and drift").add_subparsers(title="commands")
    apply = automations.add_parser("apply", help="create automations.yaml's automations on the Prefect"
                                   " server of PREFECT_API_URL (replacing those of the same names)")
    apply.add_argument("--webhook-url", default=os.environ.get("PADIM_WEBHOOK_URL"),
                       help="where the webhook posts, saved as the Webhook block padim-webhook (default:"
                       " $PADIM_WEBHOOK_URL, else the block as it is)")
    apply.set_defaults(run=_apply_automations)

    schedule = commands.add_parser("schedule", help="serve the retrain flow on a cron schedule")
    schedule.add_argument("--cron", default="0 2 * * *", help="cron expression (default nightly 02:00)")
    schedule.add_argument("--name", default="nightly-retrain")
    schedule.set_defaults(run=_schedule)
    return parser


def _known_line(root: Path, line: str) -> LineParams:
    """The line's params; every command's answer to a line params.yaml does not list is one line
    naming the known ones."""
    from .config import load_params

    return load_params(root / "params.yaml").line(line)


def _data_add(args: argparse.Namespace) -> None:
    from .config import load_params
    from .data.adding import add_line
    from .data.layout import from_mvtec_folder, from_separate_folders
    from .data.store import summary

    if args.append:
        _known_line(args.root, args.line)
    params = load_params(args.root / "params.yaml").line_or_defaults(args.line)
    folders = (args.normal, args.defects, args.masks)
    if (args.path is None) == all(folder is None for folder in folders):
        raise ValueError("give either PATH (MVTec layout) or --normal/--defects [--masks], not both")
    if args.replace and not args.append:
        raise ValueError("--replace goes with --append: a plain add replaces the whole line anyway")
    if args.path is not None:
        incoming = from_mvtec_folder(args.path, params.data.split)
    else:
        incoming = from_separate_folders(args.normal, args.defects, args.masks, params.data.split)
    report, version = add_line(args.root, args.line, incoming, params.data, append=args.append,
                               replace=args.replace, commit=not args.no_commit,
                               create_remote=args.create_remote)
    print(f"{report.summary()}\nnow {summary(version)}")
    _announce(args.root, version, "data add")


def _announce(root: Path, version: DataVersion, source: str) -> None:
    """A committed data version's event, for the trigger that retrains its line (flows.events)."""
    from .events import DATA_COMMITTED, emit

    if version.rev is not None and emit(DATA_COMMITTED, version.line, {
            "rev": version.rev, "md5": version.md5, "root": str(root.resolve()), "source": source}):
        print(f"announced {DATA_COMMITTED} for {version.line} at {version.rev[:12]}")


def _apply_automations(args: argparse.Namespace) -> None:
    from .automations import apply_automations

    for name in apply_automations(args.webhook_url):
        print(f"automation: {name}")


def _data_demo(args: argparse.Namespace) -> None:
    from .config import load_params
    from .data.adding import add_line
    from .data.demo import DEMO_LINES, UNMASKED_LINES, generate_line
    from .data.layout import from_separate_folders
    from .data.store import summary

    params = load_params(args.root / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="padim-demo-") as sources:
        for line in DEMO_LINES:
            folders = generate_line(line, Path(sources) / line, masks=line not in UNMASKED_LINES)
            data = params.line_or_defaults(line).data
            incoming = from_separate_folders(folders.normal, folders.defects, folders.masks, data.split)
            # the demo starts the embedded default's local remote if there is none yet
            report, version = add_line(args.root, line, incoming, data, create_remote=True)
            print(f"{report.summary()}\nnow {summary(version)}")


def _retrain(args: argparse.Namespace) -> int:
    from .config import load_params
    from .data.store import DataStore
    from .registry.lineage import require_clean
    from .registry.registry import Registry
    from .retrain import run_retrain

    # what can be checked before Prefect starts: params.yaml, the lines named, the revision, the tree
    path = args.root / "params.yaml"
    for line in args.lines:
        _known_line(args.root, line)
    if not (args.lines or load_params(path).lines):
        raise ValueError(f"{path} lists no product lines: add one with 'padim-mlops data add'")
    if args.rev:
        DataStore(args.root).commit_of(args.rev)
    require_clean(args.root.resolve(), args.allow_dirty)
    Registry(args.root).check_access()
    results = run_retrain(args.lines or None, args.rev, str(args.root.resolve()), args.dask_address,
                          args.parallel, args.allow_dirty)
    return 1 if any(result.error for result in results) else 0


def _tune(args: argparse.Namespace) -> int:
    from .data.store import DataStore
    from .tune import grid_table, tune_product_line

    _known_line(args.root, args.line)  # before Prefect starts
    if args.rev:
        DataStore(args.root).commit_of(args.rev)
    result = tune_product_line(args.line, args.rev, str(args.root.resolve()), write=not args.dry_run)
    print(grid_table(result))
    where = "written to params.yaml" if result.written else "not written (--dry-run)"
    print(f"\n{result.line}: best on validation {result.winner}, {where}; MLflow run {result.run_id}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .registry.registry import tracking_uri

    _data_demo(args)
    code = _retrain(argparse.Namespace(lines=[], rev=None, root=args.root, dask_address=None, parallel=2,
                                       allow_dirty=False))
    uri = tracking_uri(args.root)
    print(
        "\nWhere to look next:\n"
        f"  mlflow ui --backend-store-uri {uri}      # runs, figures, the padim-<line> models\n"
        "  prefect server start                        # then run again to see the flow runs\n"
        f"  padim-mlops predict brick {args.root / 'data' / 'brick' / 'test' / 'stain'} --out predictions\n"
    )
    return code


def _predict(args: argparse.Namespace) -> int:
    from .batch import list_images, score_files
    from .registry.registry import Registry

    production = _known_line(args.root, args.line).production
    report = score_files(Registry(args.root), args.line, list_images(args.images), args.out, args.alias,
                         args.batch_size, production=production)
    print(f"wrote {report.table} and {report.scored} heatmaps")
    if report.failed:
        print(f"{len(report.failed)} file(s) could not be scored (error rows in {report.table}):",
              *report.failed, sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _review(args: argparse.Namespace) -> None:
    from .batch import production_log
    from .review import parse_since, review_items, write_sheet

    since = None if args.since is None else parse_since(args.since)
    log = production_log(args.root, _known_line(args.root, args.line).production)
    if log is None:
        raise ValueError(f"{args.line}: params.yaml's production.log is null: nothing was logged to review")
    items = review_items(log.read(args.line, since), args.limit)
    if not items:
        print(f"{args.line}: nothing scored in production {'since ' + args.since if args.since else 'yet'}")
    for item in items:
        print(f"{item.time}  {item.score:6.3f}  {item.reason:<27} {item.image}  (v{item.model_version})")
    if args.out is not None:
        write_sheet(items, args.out)
        print(f"wrote {args.out}: fill in 'verdict' (normal or defect) for each image")


def _monitor(args: argparse.Namespace) -> None:
    from .monitor.flow import monitor_product_line
    from .review import parse_since

    _known_line(args.root, args.line)
    parse_since(args.since)  # a bad window is refused before Prefect starts
    print(monitor_product_line(args.line, args.since, str(args.root)).describe(args.line))


def _feedback(args: argparse.Namespace) -> None:
    from .batch import production_log
    from .data.store import summary
    from .feedback import add_feedback

    params = _known_line(args.root, args.line)
    log = production_log(args.root, params.production)
    report = add_feedback(args.root, params, args.sheet, log, args.by)
    waiting = f"; {report.left} row(s) still without a verdict" if report.left else ""
    print(f"{report.reviewed} verdict(s) read from {args.sheet}{waiting}\n{report.staging.summary()}\n"
          f"now {summary(report.version)}")
    _announce(args.root, report.version, "feedback")


def _export(args: argparse.Namespace) -> None:
    from .export import export_line
    from .registry.registry import Registry

    _known_line(args.root, args.line)
    size = tuple(args.input_size) if args.input_size else None
    report = export_line(Registry(args.root), args.line, args.export_format, args.out, args.alias, size)
    errors = ", ".join(f"{name} {error:.1e}" for name, error in report.errors.items())
    print(f"wrote {report.model} and {report.manifest.name} (raw outputs against torch: {errors})")


def _promote(args: argparse.Namespace) -> None:
    from .registry.registry import Registry

    _known_line(args.root, args.line)
    event = Registry(args.root).promote(args.line, args.version, args.reason, args.override_gates)
    overridden = f" (gates overridden: {', '.join(event.overridden)})" if event.overridden else ""
    print(f"padim-{args.line} v{args.version} is now @champion{overridden}")


def _rollback(args: argparse.Namespace) -> None:
    from .registry.registry import Registry

    _known_line(args.root, args.line)
    event = Registry(args.root).rollback(args.line, args.reason)
    print(f"padim-{args.line}: @champion rolled back from v{event.champion_before} to"
          f" v{event.champion_after}")


def _demote(args: argparse.Namespace) -> None:
    from .registry.registry import Registry

    _known_line(args.root, args.line)
    event = Registry(args.root).demote(args.line, args.reason)
    print(f"padim-{args.line}: v{event.version} is no longer @champion; the line has no champion")


def _answer(args: argparse.Namespace) -> None:
    from .approval import resume_waiting_flow
    from .registry.registry import Registry

    _known_line(args.root, args.line)
    registry = Registry(args.root)
    if args.approve:
        registry.approve(args.line, args.version, args.reason)
        print(f"padim-{args.line} v{args.version} approved: now @champion")
    else:
        registry.reject(args.line, args.version, args.reason)
        print(f"padim-{args.line} v{args.version} rejected")
    resumed = resume_waiting_flow(registry, args.line, args.version, args.approve, args.reason)
    if resumed:
        print(resumed)


def _history(args: argparse.Namespace) -> None:
    from .registry.registry import Registry

    _known_line(args.root, args.line)
    events = Registry(args.root).history(args.line)
    if not events:
        print(f"{args.line}: no decisions yet")
    for event in events:
        print(_event_line(event))


def _event_line(event: Event) -> str:
    """One event of the audit trail as a line of text (gates overridden and failed, if any)."""
    when = event.at[:19].replace("T", " ") + " UTC"
    state = {"RUNNING": " (in progress, or its process died)", "KILLED": " (interrupted: no effect)"}
    text = (f"{when}  {event.action:<8} v{event.version:<4} {event.outcome:<11} {event.moves():<28}"
            f" by {event.by}: {event.reason}{state.get(event.status, '')}")
    if event.overridden:
        text += f" [gates overridden: {', '.join(event.overridden)}]"
    return text


def _status(args: argparse.Namespace) -> None:
    from .config import load_params
    from .registry.registry import Registry

    for line in args.lines:
        _known_line(args.root, line)
    registry = Registry(args.root)
    for line in args.lines or sorted(load_params(args.root / "params.yaml").lines):
        print(line)
        status = registry.status(line)
        for summary in status.versions:
            print(f"  {summary.role:<20} {summary.describe()}")
        last = status.last
        print(f"  last decision: {_event_line(last) if last is not None else 'none yet'}")


def _schedule(args: argparse.Namespace) -> None:
    from prefect.settings import PREFECT_API_URL

    from .retrain import retrain

    if not PREFECT_API_URL.value():
        msg = (
            "scheduling needs a Prefect server (the ephemeral one runs no scheduler): run"
            " 'prefect server start' and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
        raise RuntimeError(msg)
    retrain.serve(name=args.name, cron=args.cron, parameters={"root": str(args.root.resolve())})


def _data_validate(args: argparse.Namespace) -> None:
    from .config import load_params
    from .data.validation import describe, validate_line

    project = load_params(args.root / "params.yaml")
    data = (project.lines.get(args.path.name) or project.line_or_defaults("defaults")).data
    minimum_train = data.min_train_images if args.min_train is None else args.min_train
    minimum_validation = data.min_validation_images if args.min_validation is None else args.min_validation
    validate_line(args.path, minimum_train, minimum_validation)
    print(f"{args.path}: valid ({describe(args.path)})")


def _data_diff(args: argparse.Namespace) -> None:
    from .data.roles import diff_versions
    from .data.store import DataStore

    store = DataStore(args.root)
    _known_line(args.root, args.line)
    store.commit_of(args.rev_a)
    store.commit_of(args.rev_b)
    rows = diff_versions(store.file_digests(args.line, args.rev_a), store.file_digests(args.line, args.rev_b))
    columns = ("added", "removed", "changed", "moved")
    print(f"{args.line}: {args.rev_a} -> {args.rev_b}")
    print(f"{'role':<12}" + "".join(f"{name:>9}" for name in columns))
    for role, counts in rows.items():
        print(f"{role:<12}" + "".join(f"{counts[name]:>9}" for name in columns))


def _data_pull(args: argparse.Namespace) -> None:
    from .data.store import DataStore, summary

    store = DataStore(args.root)
    _known_line(args.root, args.line)
    if args.rev:
        store.commit_of(args.rev)
    version = store.pull(args.line, args.rev)
    print(f"{summary(version)} at {version.path}")


if __name__ == "__main__":
    sys.exit(main())
