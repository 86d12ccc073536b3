"""`ServeConfig`: the server's limits and scheduling knobs (typed, frozen, checked once; STYLE §5.3).

`mmada serve` builds it from its flags; `create_app(pipe, ServeConfig(...))` takes it. Every limit is
enforced before a request reaches the model, and each refusal names the request field it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    """Limits and scheduling of one `mmada serve` process."""

    model_name: str = "mmada-tiny"
    """The id the server reports in /v1/models and accepts in a request's `model` field."""
    api_key: str | None = None
    """When set, every API route needs `Authorization: Bearer <api_key>` (the page's own files do not)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body; a larger one gets 413 before it is parsed."""
    max_prompt_tokens: int = 384
    """Longest prompt (chat template and image tokens included)."""
    max_tokens: int = 512
    """Largest `max_tokens` a request may ask for."""
    max_steps: int = 512
    """Largest `steps` a request may ask for (text denoising steps or MaskGIT timesteps)."""
    max_n: int = 4
    """Largest `n` (choices per chat request, images per image request)."""
    max_image_bytes: int = 4 * 1024 * 1024
    """Largest encoded input image (after base64 decoding)."""
    max_image_pixels: int = 4096 * 4096
    """Largest input image, width x height, read from its header before anything is decoded."""
    max_partial_images: int = 32
    """Largest `partial_images` of a streamed image request."""
    queue_size: int = 64
    """Requests waiting for the model beyond which new ones get 429 with Retry-After."""
    max_batch: int = 16
    """Most rows (choices or images) that one model call carries."""
    batch_window_s: float = 0.002
    """How long the worker waits for compatible requests after taking one, before running the batch."""
    request_timeout_s: float = 120.0
    """Time a request may spend queued and running; past it, its work stops and it gets 504."""
    retry_after_s: int = 1
    """Seconds the Retry-After header of a 429 suggests."""

    def __post_init__(self) -> None:
        positive = ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_steps", "max_n", "max_image_bytes",
                    "max_image_pixels", "queue_size", "max_batch", "retry_after_s")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
        if self.max_partial_images < 0:
            raise ValueError(f"`max_partial_images` must be >= 0, got {self.max_partial_images}")
        if not self.batch_window_s >= 0:
            raise ValueError(f"`batch_window_s` must be >= 0, got {self.batch_window_s}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"`request_timeout_s` must be > 0, got {self.request_timeout_s}")
        if not self.model_name:
            raise ValueError("`model_name` must not be empty")
