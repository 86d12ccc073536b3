"""`mmada serve`: the OpenAI-compatible server (`mmada.serving`) on one model, run by uvicorn."""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from ..utils.config import field_docs
from . import _add_dataclass_flags, _add_model_flags, _add_preset_flag, _pipeline, _sampling

API_KEY_ENV = "MMADA_API_KEY"
LIMITS = ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_steps", "max_n", "max_image_bytes",
          "max_image_pixels", "max_partial_images", "queue_size", "max_batch", "batch_window_s", "request_timeout_s")


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the model, then serve it until interrupted."""
    try:
        import uvicorn

        from ..serving import ServeConfig, create_app
    except ImportError as err:
        raise ImportError(f"mmada serve needs the serve extra: pip install 'mmada[serve]' ({err})") from None
    from ..utils.files import DEFAULT_MODEL

    pipe = _pipeline(args)
    image = {name.removeprefix("image_"): value for name, value in vars(args).items()
             if name.startswith("image_") and name != "image_tokenizer" and value is not None}
    pipe.settings = dataclasses.replace(pipe.settings, text=_sampling(args, pipe.settings.text),
                                        image=pipe.image_settings(preset=args.preset, **image))
    name = args.model_name or (DEFAULT_MODEL if args.model == DEFAULT_MODEL else os.path.basename(
        os.path.normpath(args.model)))
    limits: dict[str, Any] = {key: getattr(args, key) for key in LIMITS if getattr(args, key) is not None}
    config = ServeConfig(model_name=name, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None, **limits)
    print(f"serving {name} on http://{args.host}:{args.port}/ (OpenAI API under /v1)", flush=True)
    uvicorn.run(create_app(pipe, config), host=args.host, port=args.port, log_level="warning" if args.quiet else "info")
    return 0


def add_serve_command(sub: Any) -> None:
    from ..sampling import ImageSampling, TextSampling
    from ..serving import ServeConfig

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server and web page")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None, help=f"require `Authorization: Bearer KEY` on every API route "
                   f"(default: ${API_KEY_ENV} if set, else no key)")
    p.add_argument("--model-name", default=None, help="the model id the API reports and accepts (default: the "
                   "--model name)")
    _add_model_flags(p)
    _add_preset_flag(p)
    _add_dataclass_flags(p, TextSampling, "text sampling", "text")
    _add_dataclass_flags(p, ImageSampling, "image sampling", "image", prefix="image")
    limits = p.add_argument_group("limits", "Requests beyond these are refused with a 4xx naming the field.")
    limit_docs = field_docs(ServeConfig)
    for f in dataclasses.fields(ServeConfig):
        if f.name in LIMITS:
            limits.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=float if "float" in str(f.type)
                                else int, default=None, metavar=f.name.upper(),
                                help=f"{limit_docs.get(f.name, '')} (default: {f.default})")
    p.set_defaults(func=cmd_serve)
