"""Hugging Face loading options (`LoadOptions`): how `from_pretrained` reads a model and places
its weights, passed through to transformers' `from_pretrained` of the model's config, tokenizer
and weights; and the split of `from_pretrained`'s keywords into these and `ParallelCompConfig`
fields (`from_pretrained_settings`).

`revision`, `token` and `trust_remote_code` go to all three; `device_map`, `max_memory` and
`quantization_config` to the weights. The token is a secret: it shows in no repr, error or
`describe()`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import ConfigDict, Field, SecretStr, StrictBool, StrictInt, StrictStr, field_validator
from transformers.quantizers import AutoQuantizationConfig
from transformers.utils.quantization_config import QuantizationConfigMixin

from .config import ParallelCompConfig
from .errors import CheckedModel, InvalidConfigError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
"""`device_map` values that let accelerate spread the layers over the devices it finds."""


def _device_name(value: object) -> object:
    """A device as written in a device map: a GPU index as 'cuda:N', a `torch.device` as its
    name; anything else as it is (for the field's type to judge)."""
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"cuda:{value}"
    return value


def _check_device_name(name: str) -> str:
    if name != "disk":
        try:
            torch.device(name)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"{name!r} is not a device (such as 'cpu', 'cuda:0' or 'disk')"
            ) from None
    return name


class LoadOptions(CheckedModel):
    """Options of transformers' `from_pretrained` that `ParallelCompEngine.from_pretrained`
    passes through; bad values raise `InvalidConfigError` before anything is loaded. Only the
    options given are passed."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    device_map: StrictStr | dict[StrictStr, StrictStr] | None = Field(
        None,
        description="Where the weights go, through accelerate: a strategy ('auto', 'balanced', "
        "'balanced_low_0', 'sequential') or one device ('cpu', 'cuda:0'), or a dict from module "
        "names ('model.layers.0', 'lm_head', '' for all) to devices (GPU indices, 'cuda:N', "
        "'cpu', 'disk'). With a map the model is not moved to `device`.",
    )
    max_memory: dict[StrictInt | StrictStr, StrictInt | StrictStr] | None = Field(
        None,
        description="Most memory a device map may put on each device: {0: '20GiB', 'cpu': "
        "'64GiB'}.",
    )
    quantization_config: QuantizationConfigMixin | None = Field(
        None,
        description="A transformers quantization config (`BitsAndBytesConfig(...)`), or its "
        "dict with a 'quant_method'.",
    )
    trust_remote_code: StrictBool | None = Field(
        None, description="Run the model repository's own code (for models that need it)."
    )
    revision: StrictStr | None = Field(
        None, min_length=1, description="The Hub branch, tag or commit to load."
    )
    token: SecretStr | StrictBool | None = Field(
        None,
        description="Hugging Face Hub token for gated or private models (True: the one saved "
        "by `hf auth login`). Never shown.",
    )

    def __init__(self, **data: Any) -> None:
        token = data.get("token")
        if token == "" or not isinstance(token, str | bool | SecretStr | None):
            # Checked here, so that pydantic's error, which quotes the value, never sees it.
            raise InvalidConfigError(
                "invalid LoadOptions: token: must be a non-empty string or a bool "
                "(the value is not shown)"
            )
        super().__init__(**data)

    @field_validator("device_map", mode="before")
    @classmethod
    def _device_map_names(cls, device_map: object) -> object:
        if isinstance(device_map, Mapping):
            return {key: _device_name(value) for key, value in device_map.items()}
        device_map = _device_name(device_map)
        if not isinstance(device_map, str | None):
            raise ValueError(
                "device_map must be a strategy such as 'auto', a device, or a dict from module "
                "names to devices"
            )
        return device_map

    @field_validator("device_map")
    @classmethod
    def _known_devices(cls, device_map: str | dict[str, str] | None) -> str | dict[str, str]:
        if isinstance(device_map, dict):
            if not device_map:
                raise ValueError("a device map names at least one module")
            for name in device_map.values():
                _check_device_name(name)
        elif device_map not in DEVICE_MAP_STRATEGIES and device_map is not None:
            _check_device_name(device_map)
        return device_map

    @field_validator("quantization_config", mode="before")
    @classmethod
    def _quantization_object(cls, value: object) -> object:
        if isinstance(value, Mapping):
            return AutoQuantizationConfig.from_dict(dict(value))
        return value

    @classmethod
    def merged(
        cls, base: LoadOptions | Mapping[str, Any] | None, overrides: Mapping[str, Any]
    ) -> LoadOptions:
        """`base` (options, their dict, or None) with `overrides` put over it."""
        if isinstance(base, LoadOptions):
            base = {name: getattr(base, name) for name in base.model_fields_set}
        elif base is not None and not isinstance(base, Mapping):
            raise InvalidConfigError(
                f"load_options must be a LoadOptions or a dict, not {type(base).__name__}"
            )
        return cls(**(dict(base or {}) | dict(overrides)))

    def check_off_hub(self, model: str) -> None:
        """`InvalidConfigError` if `revision` or `token`, which only a Hub model takes, is given
        for `model`, which is not one."""
        given = [name for name in ("revision", "token") if getattr(self, name) is not None]
        if given:
            raise InvalidConfigError(
                f"{' and '.join(given)} select a Hugging Face Hub model's version and access, "
                f"but {model} is not loaded from the Hub: leave {' and '.join(given)} out"
            )

    @property
    def places_model(self) -> bool:
        """Whether transformers places the weights (a device map), rather than `device`."""
        return self.device_map is not None

    def mapped_devices(self) -> list[str]:
        """The devices a device map names, in order, without 'disk' (none for a strategy)."""
        names = self.device_map.values() if isinstance(self.device_map, dict) else [self.device_map]
        found = [n for n in names if n is not None and n not in (*DEVICE_MAP_STRATEGIES, "disk")]
        return list(dict.fromkeys(found))

    def hub_keywords(self) -> dict[str, Any]:
        """The keywords for every `from_pretrained` (config, tokenizer, weights)."""
        given = {name: getattr(self, name) for name in ("revision", "token", "trust_remote_code")}
        if isinstance(given["token"], SecretStr):
            given["token"] = given["token"].get_secret_value()
        return {name: value for name, value in given.items() if value is not None}

    def model_keywords(self, device: torch.device) -> dict[str, Any]:
        """The keywords for the weights' `from_pretrained`. A quantized model without a device
        map is placed on `device` by transformers (quantized weights cannot be moved after)."""
        keywords = self.hub_keywords()
        for name in ("device_map", "max_memory", "quantization_config"):
            if getattr(self, name) is not None:
                keywords[name] = getattr(self, name)
        if self.quantization_config is not None and self.device_map is None:
            keywords["device_map"] = str(device)
        return keywords

    def describe(self) -> dict[str, Any]:
        """The options given, as JSON data, the token hidden."""
        described: dict[str, Any] = {}
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "<hidden>"
            elif isinstance(value, QuantizationConfigMixin):
                value = value.to_dict()
            described[name] = value
        return described


LOADING_OPTIONS = tuple(LoadOptions.model_fields)
"""The names of the loading options."""


def from_pretrained_settings(
    config: ParallelCompConfig | None,
    load_options: LoadOptions | Mapping[str, Any] | None,
    keywords: Mapping[str, Any],
) -> tuple[ParallelCompConfig, LoadOptions]:
    """The settings of a `from_pretrained` call: `config` with the keywords that are its fields
    put over it, and `load_options` with those that are loading options; `InvalidConfigError`
    for any other keyword and for bad values."""
    settings, loading = _split_keywords(keywords)
    config = ParallelCompConfig(**((config.model_dump() if config else {}) | settings))
    return config, LoadOptions.merged(load_options, loading)


def _split_keywords(keywords: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`from_pretrained`'s keywords as (`ParallelCompConfig` fields, loading options);
    `InvalidConfigError`, naming them and what is accepted, for keywords that are neither."""
    fields = tuple(ParallelCompConfig.model_fields)
    unknown = [name for name in keywords if name not in fields and name not in LOADING_OPTIONS]
    if unknown:
        hints = [
            f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
            for name in unknown
            for close in [difflib.get_close_matches(name, (*fields, *LOADING_OPTIONS), n=1)]
        ]
        raise InvalidConfigError(
            f"unknown keyword{'s' if len(unknown) > 1 else ''} {', '.join(hints)}: "
            f"from_pretrained takes ParallelCompConfig fields ({', '.join(fields)}) and "
            f"loading options ({', '.join(LOADING_OPTIONS)})"
        )
    settings = {name: value for name, value in keywords.items() if name in fields}
    loading = {name: value for name, value in keywords.items() if name in LOADING_OPTIONS}
    return settings, loading
