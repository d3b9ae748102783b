"""GenDet's stage plan: which stages run, which networks each trains, and their optimizers.

The plan (``plan``), where each stage is one or more passes over ``real``, ``fake`` or ``all`` rows::

    pretrain     all   teacher N_t + CE head (and the linear probe, in the same passes)
    rNN.a        real  each student: Eq. 1 against the frozen teacher        (ts_real, ts_fake, gendet)
    rNN.b        fake  each student: alpha * Eq. 2 on G(x^f); G = identity for ts_fake (ts_fake, gendet)
    rNN.c        fake  the augmenter G: Eq. 3, teacher and student frozen   (gendet)
    classifier   all   each classifier N_c: CE on D = (z_t - z_s)^2, no G    (ts_real, ts_fake, gendet)

for NN in 1..rotations. The rungs have separate students and classifiers but share the teacher and
every data pass (``gendet.method.gendet.trainer`` runs the plan).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from gendet.features.sources import Kind
from gendet.method.gendet.config import TrainConfig
from gendet.method.gendet.networks import Arch, Augmenter, Classifier, LinearProbe, Student, TeacherHead


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    kind: Kind
    epochs: int
    jobs: tuple[str, ...]
    """``<what>`` or ``<what>.<method>``: teacher, probe, real.M, fake.M, augmenter, classifier.M."""


def plan(cfg: TrainConfig) -> list[Stage]:
    """The ordered stages for ``cfg.methods``."""
    students = cfg.student_methods
    pretrain = tuple(j for j, m in (("teacher", students or cfg.wants("teacher")), ("probe", cfg.wants("linear_probe"))) if m)
    stages = [Stage("pretrain", "all", cfg.teacher_epochs, pretrain)]
    fakes = tuple(f"fake.{m}" for m in students if m != "ts_real")
    for r in range(1, cfg.rotations + 1 if students else 1):
        stages.append(Stage(f"r{r:02d}.a", "real", cfg.stage_epochs, tuple(f"real.{m}" for m in students)))
        if fakes:
            stages.append(Stage(f"r{r:02d}.b", "fake", cfg.stage_epochs, fakes))
        if cfg.wants("gendet"):
            stages.append(Stage(f"r{r:02d}.c", "fake", cfg.stage_epochs, ("augmenter",)))
    if students:
        stages.append(Stage("classifier", "all", cfg.classifier_epochs, tuple(f"classifier.{m}" for m in students)))
    return stages


def net_key(job: str) -> str:
    """The network a job trains: real.M and fake.M train student.M."""
    what, _, method = job.partition(".")
    return {"real": f"student.{method}", "fake": f"student.{method}"}.get(what, job)


def build_nets(cfg: TrainConfig, arch: Arch) -> dict[str, nn.Module]:
    """Fresh networks for every rung in ``cfg.methods``, in a fixed order (seeded by the caller)."""
    nets: dict[str, nn.Module] = {}
    if cfg.student_methods or cfg.wants("teacher"):
        nets["teacher"] = TeacherHead(arch)
    if cfg.wants("linear_probe"):
        nets["probe"] = LinearProbe(arch)
    for m in cfg.student_methods:
        nets[f"student.{m}"] = Student(arch)
        nets[f"classifier.{m}"] = Classifier(arch)
    if cfg.wants("gendet"):
        nets["augmenter"] = Augmenter(arch, bound=cfg.augmenter_bound)
    return nets


def optimizer_key(cfg: TrainConfig, job: str) -> str:
    """The AdamW a job steps: its network's, or with per-stage student optimizers, the network's
    for that stage (``student.M@real``, ``student.M@fake``)."""
    what = job.partition(".")[0]
    if what in ("real", "fake") and cfg.student_optimizer == "per_stage":
        return f"{net_key(job)}@{what}"
    return net_key(job)


def optimizer_keys(cfg: TrainConfig, nets: dict[str, nn.Module]) -> dict[str, str]:
    """{optimizer key: network key} for every optimizer the plan uses."""
    keys = {}
    for stage in plan(cfg):
        for job in stage.jobs:
            keys[optimizer_key(cfg, job)] = net_key(job)
    return {k: keys[k] for k in sorted(keys) if keys[k] in nets}


def learning_rate(cfg: TrainConfig, key: str) -> float:
    what = key.split(".")[0]
    return {"teacher": cfg.teacher_lr, "probe": cfg.probe_lr, "student": cfg.student_lr,
            "augmenter": cfg.augmenter_lr, "classifier": cfg.classifier_lr}[what]
