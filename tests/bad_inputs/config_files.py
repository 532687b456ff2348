"""Config files (``metaacdc train --config FILE``): every setting is checked before anything
is written, and the one line names the file and each wrong setting."""

from __future__ import annotations

from collections.abc import Callable

from tests.bad_inputs.table import Case, Workspace


def _train_with(text: str, suffix: str = "yaml") -> Callable[[Workspace], list[str]]:
    """A row's command line: `metaacdc train --config` a file holding ``text``."""

    def argv(ws: Workspace) -> list[str]:
        path = ws.write(f"settings.{suffix}", text)
        return ["train", "--config", str(path), "--meta-updates", "1"]

    return argv


def _wrong(field: str, expected: str) -> str:
    """The message of a wrong ``field`` read from settings.yaml."""
    return rf"settings\.(yaml|toml): .*{field}=.* is not valid \(expected {expected}"


CASES = [
    Case(
        "config unknown setting",
        r"settings\.yaml: unknown setting\(s\) meta_lrr",
        argv=_train_with("meta_lrr: 0.1\n"),
    ),
    Case(
        "config not a mapping",
        r"settings\.yaml: expected a mapping",
        argv=_train_with("- 1\n- 2\n"),
    ),
    Case("config not yaml", r"settings\.yaml: not valid YAML", argv=_train_with("ways: [5\n")),
    Case("config not toml", r"settings\.toml: not valid TOML", argv=_train_with("ways = ", "toml")),
    Case(
        "config of another format",
        r"settings\.json: config files must end in \.yaml, \.yml or \.toml",
        argv=_train_with('{"ways": 5}', "json"),
    ),
    Case(
        "config missing",
        r"absent\.yaml: config file not found",
        argv=lambda ws: ["train", "--config", "absent.yaml"],
        raises=FileNotFoundError,
    ),
    Case(
        "config setting given twice",
        r"settings\.yaml: setting meta_lr is given twice",
        argv=_train_with("meta_lr: 0.1\nmeta-lr: 0.2\n"),
    ),
    Case(
        "config duplicate yaml key",
        r"settings\.yaml: setting ways is given twice",
        argv=_train_with("ways: 5\nways: 20\n"),
    ),
    Case(
        "config boolean as quoted text",
        _wrong("first_order", "true or false"),
        argv=_train_with('first_order: "no"\n'),
    ),
    Case(
        "config boolean as number",
        _wrong("amp", "true or false"),
        argv=_train_with("amp: 1\n"),
    ),
    Case(
        "config boolean in toml as text",
        _wrong("augment", "true or false"),
        argv=_train_with('augment = "false"\n', "toml"),
    ),
    Case(
        "config nan learning rate",
        _wrong("meta_lr", "a finite number > 0"),
        argv=_train_with("meta_lr: .nan\n"),
    ),
    Case(
        "config infinite inner lr",
        _wrong("inner_lr", "a finite number > 0"),
        argv=_train_with("inner_lr: .inf\n"),
    ),
    Case(
        "config negative inner lr",
        _wrong("inner_lr", "a finite number > 0"),
        argv=_train_with("inner_lr: -0.1\n"),
    ),
    Case(
        "config learning rate as words",
        _wrong("meta_lr", "a finite number > 0"),
        argv=_train_with("meta_lr: fast\n"),
    ),
    Case("config one way", _wrong("ways", "a whole number >= 2"), argv=_train_with("ways: 1\n")),
    Case(
        "config fractional shots",
        _wrong("shots", "a whole number >= 1"),
        argv=_train_with("shots: 1.5\n"),
    ),
    Case(
        "config whole number as text",
        _wrong("queries", "a whole number >= 1"),
        argv=_train_with('queries: "16"\n'),
    ),
    Case(
        "config atom drop of one",
        _wrong("atom_drop", r"a finite number >= 0 and < 1"),
        argv=_train_with("atom_drop: 1.0\n"),
    ),
    Case(
        "config negative workers",
        _wrong("workers", "a whole number >= 0"),
        argv=_train_with("workers: -1\n"),
    ),
    Case(
        "config seed as boolean",
        _wrong("seed", "a whole number >= 0"),
        argv=_train_with("seed: yes\n"),
    ),
    Case(
        "config zero image size",
        _wrong("image_size", "a whole number >= 1, or null"),
        argv=_train_with("image_size: 0\n"),
    ),
    Case(
        "config unknown dataset",
        _wrong("dataset", "one of synthetic, miniimagenet"),
        argv=_train_with("dataset: imagenet\n"),
    ),
    Case(
        "config unknown engine",
        _wrong("engine", "one of auto, learn2learn, batched"),
        argv=_train_with("engine: gpu\n"),
    ),
    Case(
        "config unknown init",
        _wrong("init", "one of auto, pytorch, closerlook"),
        argv=_train_with("init: kaiming\n"),
    ),
    Case(
        "config every wrong setting named",
        r"settings\.yaml: ways=0 is not valid .*; meta_lr=-1 is not valid",
        argv=_train_with("ways: 0\nmeta_lr: -1\n"),
    ),
    Case(
        "config too few synthetic images",
        r"shots \+ queries = 17 images per class are needed, but 64 class\(es\) of the synthetic",
        argv=_train_with("synthetic_images_per_class: 4\n"),
    ),
    Case(
        "config protocol of another dataset",
        r"data_protocol applies to dataset omniglot only",
        argv=_train_with("data_protocol: vinyals\n"),
    ),
]
