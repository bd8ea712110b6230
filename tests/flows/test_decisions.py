"""Decisions a quality team can sign, end to end: real git, DVC (local remote), MLflow on SQLite and
Prefect's test server. Operating points that stop a line its validation cannot support, the champion
re-scored as a run of its own, promotions that need a reason (and an override for failed gates),
demotion, approval, exact lineage, data on the remote, and what status and history print."""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from flows.data.store import DataStore
from flows.registry.registry import Registry, model_name

from ..projects import git, init_project, padim, tiny_params, versions
from ..serving import free_port
from ..synthetic import write_mvtec_folder

# tiny lines on the F1 rule (tiny_params), and lines that each show one decision
PARAMS = tiny_params("alpha", "solo") + """\
  weak:                     # a gate no model passes: its versions fail their gates
    gates: {floors: {image_auroc: 1.5}}
  gated:
    promotion: approval
  refused:
    promotion: approval
  budget:                   # the default rule: a few validation normals cannot support the budget
    thresholds: {rule: false_alarm_budget}
"""
LINES = ("alpha", "solo", "weak", "gated", "refused", "budget")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, prefect_harness: None) -> Path:
    """Every line added and retrained once."""
    base = tmp_path_factory.mktemp("decisions")
    root = base / "project"
    init_project(root, base / "remote", PARAMS)
    for seed, line in enumerate(LINES):
        assert padim(root, "data", "add", line, str(write_mvtec_folder(base / line, 8, 4, 4, seed=seed,
                                                                     n_validation=4))) == 0
    assert padim(root, "retrain") == 0
    return root


def registry_state(registry: Registry, line: str) -> tuple:
    """Everything a refused decision must leave as it was: aliases, version tags, the trail."""
    found = registry.client.search_model_versions(f"name = '{model_name(line)}'")
    aliases = {alias: str(v.version) for v in found for alias in v.aliases}
    tags = sorted((str(v.version), sorted(v.tags.items())) for v in found)
    return aliases, tags, len(registry.history(line))


def test_a_line_whose_validation_cannot_support_its_budget_stays_challenger_naming_what_it_needs(
        project: Path) -> None:
    registry = Registry(project)
    assert registry.champion("budget") is None
    version = registry.challenger("budget")
    normals = len(list((DataStore(project).pull("budget").path / "validation" / "good").iterdir()))
    assert (f"validation holds {normals} normal images: a false-alarm budget of 0.05 at 90% confidence needs"
            " at least 45") in version.tags["padim.reason"]
    assert "operating point supported by validation" in json.loads(version.tags["padim.gate.failed"])
    run = registry.client.get_run(version.run_id)
    assert run.data.params["thresholds.rule"] == "false_alarm_budget"
    assert run.data.params["thresholds.false_alarm_budget"] == "0.05"
    for metric in ("validation_normal_fpr", "test_normal_fpr_low", "test_normal_fpr_high", "image_recall_low",
                   "image_recall_high"):
        assert metric in run.data.metrics


def test_the_champion_rescored_on_new_data_is_a_run_of_its_own_linked_from_the_decision(
        project: Path, tmp_path: Path) -> None:
    registry = Registry(project)
    champion = registry.champion("alpha")
    extra = write_mvtec_folder(tmp_path / "more", 4, 2, 2, seed=11, n_validation=1)
    for image in extra.rglob("*.png"):
        image.rename(image.with_name(f"w2-{image.name}"))
    assert padim(project, "data", "add", "alpha", "--append", "--normal", str(extra / "train" / "good")) == 0
    assert padim(project, "retrain", "alpha") == 0
    gate = [event for event in registry.history("alpha") if event.action == "gate"][-1]
    assert gate.version == "2" and gate.links["candidate_run"] == registry.version("alpha", "2").run_id
    rescored = registry.client.get_run(gate.links["champion_run"])
    data = DataStore(project).pull("alpha")
    assert rescored.data.tags["padim.rescored_version"] == str(champion.version)
    assert rescored.data.tags["padim.data_md5"] == data.md5
    # the logged AUROC is the champion's own, from its served scores on the new test split
    test = sorted((data.path / "test").rglob("*.png"))
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in test])
    scores = mlflow.pyfunc.load_model(f"models:/{model_name('alpha')}/{champion.version}").predict(pixels)
    labels = [path.parent.name != "good" for path in test]
    assert rescored.data.metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, scores["pred_score"]))


def test_promote_without_a_reason_or_over_failed_gates_is_refused_and_writes_nothing(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(project)
    before = registry_state(registry, "weak")
    with pytest.raises(SystemExit) as usage:
        padim(project, "promote", "weak", "1")
    assert usage.value.code == 2
    assert "the following arguments are required: --reason" in capsys.readouterr().err
    assert padim(project, "promote", "weak", "1", "--reason", "looks fine to me") == 1
    assert ("padim-weak v1 failed its gates (image_auroc >= 1.5): image_auroc 1.0000 below floor 1.5; give"
            " --override-gates") in capsys.readouterr().err
    assert registry_state(registry, "weak") == before


def test_an_override_records_the_gates_it_overrode_and_keeps_the_gates_verdict(project: Path) -> None:
    registry = Registry(project)
    gate_reason = registry.version("weak", "1").tags["padim.gate.reason"]
    assert padim(project, "promote", "weak", "1", "--reason", "QA accepts", "--override-gates") == 0
    event = registry.history("weak")[-1]
    assert (event.action, event.outcome, event.overridden) == ("promote", "champion", ["image_auroc >= 1.5"])
    assert (event.reason, event.by) == ("QA accepts", getpass.getuser())
    tags = registry.version("weak", "1").tags
    assert tags["padim.gate"] == "failed" and tags["padim.gate.reason"] == gate_reason
    assert padim(project, "promote", "weak", "1", "--reason", "again", "--override-gates") == 0
    promotions = [event.reason for event in registry.history("weak") if event.action == "promote"]
    assert promotions[-2:] == ["QA accepts", "again"]


def test_demote_removes_a_champion_that_replaced_none(project: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(project)
    assert str(registry.champion("solo").version) == "1"
    assert padim(project, "rollback", "solo", "--reason", "promoted by mistake") == 1
    assert "replaced no earlier champion: 'padim-mlops demote solo --reason ...' removes it" in (
        capsys.readouterr().err)
    assert padim(project, "demote", "solo", "--reason", "promoted by mistake") == 0
    assert registry.champion("solo") is None
    event = registry.history("solo")[-1]
    assert (event.action, event.champion_before, event.champion_after, event.reason) == (
        "demote", "1", "", "promoted by mistake")
    assert registry.version("solo", "1").tags["padim.decision"] == "demoted"


def test_under_approval_a_passing_candidate_waits_until_approved(project: Path) -> None:
    from flows.retrain import retrain_product_line

    registry = Registry(project)
    assert registry.champion("gated") is None and str(registry.alias("gated", "pending").version) == "1"
    result = retrain_product_line("gated", root=str(project), approval_timeout_s=2)  # the flow waits, in vain
    assert result.decision == "pending" and registry.champion("gated") is None
    assert padim(project, "approve", "gated", "1", "--reason", "heatmaps reviewed") == 0
    assert str(registry.champion("gated").version) == "1" and registry.alias("gated", "pending") is None
    assert [(e.action, e.outcome) for e in registry.history("gated")] == [("gate", "pending"),
                                                                          ("approve", "champion")]


def test_a_rejected_candidate_stays_challenger_and_says_so(project: Path) -> None:
    registry = Registry(project)
    assert padim(project, "reject", "refused", "1", "--reason", "stains missed on the heatmaps") == 0
    assert registry.champion("refused") is None and registry.alias("refused", "pending") is None
    assert registry.version("refused", "1").tags["padim.decision"] == "rejected"
    assert padim(project, "approve", "refused", "1", "--reason", "changed my mind") == 1  # no longer pending


def test_a_dirty_tree_is_refused_and_a_dirty_version_is_never_promoted_automatically(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(project)
    params = project / "params.yaml"
    committed = params.read_text()
    params.write_text(committed.replace("  solo: {}", "  solo: {model: {seed: 3}}"))
    try:
        before = versions(registry, "solo")
        assert padim(project, "retrain", "solo") == 1
        assert "uncommitted changes to params.yaml" in capsys.readouterr().err
        assert versions(registry, "solo") == before
        assert padim(project, "retrain", "solo", "--allow-dirty") == 0
        dirty = registry.version("solo", versions(registry, "solo")[-1])
        assert dirty.tags["padim.dirty"] == "true" and dirty.tags["padim.decision"] == "challenger"
        assert "fitted from uncommitted changes (params.yaml)" in dirty.tags["padim.reason"]
        champion = registry.champion("solo")
        assert champion is None or str(champion.version) != str(dirty.version)
    finally:
        params.write_text(committed)


def test_a_run_records_its_commit_and_a_dataset_per_role(project: Path) -> None:
    registry = Registry(project)
    version = registry.version("solo", "1")
    run = registry.client.get_run(version.run_id)
    assert run.data.tags["mlflow.source.git.commit"] == version.tags["padim.git_commit"]
    assert git(project, "cat-file", "-t", version.tags["padim.git_commit"]) == "commit"
    inputs = {entry.tags[0].value: entry.dataset for entry in run.inputs.dataset_inputs}
    expected = DataStore(project).role_digests("solo", version.tags["padim.data_rev"])
    assert {role: dataset.digest for role, dataset in inputs.items()} == {
        role: md5 for role, (md5, _) in expected.items()}
    source = json.loads(inputs["train"].source)
    assert source == {"remote": str(project.parent / "remote"), "path": "data/solo/train",
                      "rev": version.tags["padim.data_rev"]}


def test_locks_are_not_among_the_registered_models(project: Path) -> None:
    names = sorted(model.name for model in Registry(project).client.search_registered_models())
    assert names == sorted(model_name(line) for line in LINES)


def test_status_shows_each_role_with_its_operating_point_and_the_last_decision(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = Registry(project)
    capsys.readouterr()
    assert padim(project, "status", "budget") == 0
    out = capsys.readouterr().out.splitlines()
    challenger = registry.challenger("budget")
    metrics = registry.run_metrics(challenger.run_id)
    assert out[0] == "budget"
    md5 = challenger.tags["padim.data_md5"][:12]
    assert out[1].startswith(f"  {'challenger':<20} v{challenger.version}    data {md5}")
    assert f"false alarms {metrics['test_normal_fpr']:.3f} [" in out[1] and "recall " in out[1]
    assert out[2].startswith("  last decision: ") and f"by {getpass.getuser()}" in out[2]
    assert "gate     v1    challenger" in out[2]


def test_history_prints_every_event_oldest_first(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert padim(project, "history", "alpha") == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == len(Registry(project).history("alpha")) >= 1
    assert " gate     v1    champion    @champion none -> v1" in rows[0]


# -- the DVC remote: never silently a new one, never a champion whose data it lacks ----------------

@pytest.fixture
def small_project(tmp_path: Path, prefect_harness: None) -> Path:
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", tiny_params("tiles"))
    assert padim(root, "data", "add", "tiles", str(write_mvtec_folder(tmp_path / "v1", 8, 4, 4,
                                                                    n_validation=4))) == 0
    return root


def snapshot(root: Path) -> tuple[str, str, str]:
    return (git(root, "rev-parse", "HEAD"), git(root, "status", "--porcelain"),
            (root / "params.yaml").read_text())


@pytest.mark.parametrize("fault", ["folder moved away", "unreachable server"])
def test_data_add_refuses_a_missing_or_unreachable_remote_and_writes_nothing(
        small_project: Path, tmp_path: Path, fault: str, capsys: pytest.CaptureFixture[str]) -> None:
    remote = tmp_path / "remote"
    if fault == "folder moved away":
        remote.rename(tmp_path / "moved")
        named = str(remote)
    else:
        named = f"http://127.0.0.1:{free_port()}/dvc"
        subprocess.run([str(Path(sys.executable).parent / "dvc"), "remote", "modify", "default", "url",
                        named], cwd=small_project, check=True, capture_output=True)
        git(small_project, "commit", "-qam", "remote on a server")
    before = snapshot(small_project)
    extra = write_mvtec_folder(tmp_path / "more", 3, 0, 0, seed=5)
    for image in extra.rglob("*.png"):
        image.rename(image.with_name(f"x-{image.name}"))
    capsys.readouterr()
    append = ["data", "add", "tiles", "--append", "--normal", str(extra / "train" / "good")]
    assert padim(small_project, *append) == 1
    err = capsys.readouterr().err
    assert f"the DVC remote 'default' ({named})" in err
    assert ("does not exist" if fault == "folder moved away" else "is unreachable") in err
    assert snapshot(small_project) == before
    assert not remote.exists() if fault == "folder moved away" else remote.is_dir()  # no fresh remote made


def test_a_new_remote_folder_is_made_only_when_asked(small_project: Path, tmp_path: Path) -> None:
    (tmp_path / "remote").rename(tmp_path / "moved")
    fresh = write_mvtec_folder(tmp_path / "v2", 8, 4, 4, seed=3, n_validation=4)
    assert padim(small_project, "data", "add", "tiles", str(fresh)) == 1
    assert padim(small_project, "data", "add", "tiles", str(fresh), "--create-remote") == 0
    assert DataStore(small_project).missing_on_remote("tiles", "HEAD") == []


def test_a_champion_waits_until_its_data_is_on_the_remote(small_project: Path, tmp_path: Path) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    (tmp_path / "team").mkdir()
    subprocess.run([dvc, "remote", "add", "-d", "team", str(tmp_path / "team")], cwd=small_project,
                   check=True, capture_output=True)
    git(small_project, "commit", "-qam", "the team's remote")
    registry = Registry(small_project)
    assert padim(small_project, "retrain", "tiles") == 0
    assert registry.champion("tiles") is None
    reason = registry.challenger("tiles").tags["padim.reason"]
    assert "are not on the DVC remote 'team'" in reason and "dvc push -r team -A data/tiles.dvc" in reason
    assert padim(small_project, "promote", "tiles", "1", "--reason", "r", "--override-gates") == 1
    subprocess.run([dvc, "push", "-r", "team", "-A", "data/tiles.dvc"], cwd=small_project, check=True,
                   capture_output=True)
    assert padim(small_project, "retrain", "tiles") == 0
    assert str(registry.champion("tiles").version) == "1" and versions(registry, "tiles") == ["1"]
    assert [event.outcome for event in registry.history("tiles")] == ["challenger", "champion"]


def test_data_add_commits_only_what_it_writes_and_leaves_other_edits_byte_for_byte(
        small_project: Path, tmp_path: Path) -> None:
    params = small_project / "params.yaml"
    committed = params.read_text().replace("lines:\n", "  export: {dtype: float32}\nlines:\n")
    committed = committed.replace("defaults:\n", "defaults:\n  model:\n    layers: null   # the default\n", 1)
    committed = committed.replace("  model: {n_features: 16}\n", "")
    committed = committed.replace("    layers: null   # the default\n",
                                  "    layers: null   # the default\n    n_features: 16\n")
    params.write_text(committed)
    git(small_project, "commit", "-qam", "params with a null and a comment")
    edited = committed.replace("n_features: 16", "n_features: 12  # trying fewer")
    params.write_text(edited)
    (small_project / "notes.txt").write_text("untracked notes")
    before = git(small_project, "rev-parse", "HEAD")
    new_line = write_mvtec_folder(tmp_path / "n", 8, 4, 4, n_validation=4)
    assert padim(small_project, "data", "add", "newline", str(new_line)) == 0
    changed = git(small_project, "diff", "--name-only", before, "HEAD").splitlines()
    assert sorted(changed) == ["data/.gitignore", "data/newline.dvc", "params.yaml"]
    assert git(small_project, "show", "HEAD:params.yaml") == (committed + "  newline: {}\n").rstrip("\n")
    assert params.read_text() == edited + "  newline: {}\n"  # the user's edit, still uncommitted
    status = subprocess.run(["git", "status", "--porcelain"], cwd=small_project, capture_output=True,
                            text=True).stdout.splitlines()
    assert [row for row in status if row != "?? .padim/"] == [" M params.yaml", "?? notes.txt"]
