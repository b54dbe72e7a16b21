"""A vision-language model's processor, loaded the same way wherever images meet the model: training
(image tokens and pixels), the API's dataset checks and the inference engine.

``AutoProcessor`` builds each part from the model directory. Processors of models that also take video
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL, InternVL, …) include a video processor, which transformers builds only
with torchvision, and torchvision cannot be installed beside this torch. tunery takes images only
(Together's datasets and chat requests carry no video), so where torchvision is missing such a processor
is built from the directory's own tokenizer and image processor (transformers picks its PIL backend) with
``NoVideos`` in the video processor's place. Exports copy the directory's processor files as they are
(``processor_files``), never this stand-in. Importing this module imports transformers: callers that
must start fast import it where they use it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import transformers.processing_utils
from transformers.video_processing_utils import VideoProcessorMixin

from tunery.errors import TrainingFailed
from tunery.models.architecture import is_vision_language

# A processor checks each part's class by name in transformers' namespace, where the video processors'
# base class is exported only with torchvision: name it there (the same class), so ``NoVideos`` passes.
if not hasattr(transformers.processing_utils.transformers_module, "VideoProcessorMixin"):
    transformers.processing_utils.transformers_module.VideoProcessorMixin = VideoProcessorMixin  # type: ignore[attr-defined]

# The files that make up a model's tokenizer and processor (chat template included), by name pattern.
PROCESSOR_FILE_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model", "*.tiktoken",
    "*processor_config.json", "chat_template.json", "chat_template.jinja", "additional_chat_templates/*",
)


def load_processor(model_dir: str | Path) -> Any | None:
    """The model's processor if it is a vision-language model, else None. Its tokenizer renders with the
    processor's chat template, which knows where images go."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.utils import is_torchvision_available

    config = AutoConfig.from_pretrained(model_dir)
    if not is_vision_language(config):
        return None
    cls = processor_class(model_dir, config)
    if cls is not None and "video_processor" in cls.get_attributes() and not is_torchvision_available():
        processor = _without_videos(cls, model_dir)
    else:
        processor = AutoProcessor.from_pretrained(model_dir)
    if getattr(processor, "image_token", None) is None or not hasattr(processor, "image_processor"):
        raise TrainingFailed(f"the processor of {model_dir} has no image token or image processor, so images "
                             "cannot be placed in its sequences", user_error=True)
    if processor.chat_template:
        processor.tokenizer.chat_template = processor.chat_template
    return processor


def processor_class(model_dir: str | Path, config: Any) -> Any | None:
    """The processor class ``AutoProcessor`` would build: the one the directory names, else its model type's."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            named = json.loads(path.read_text()).get("processor_class")
            if isinstance(named, str) and hasattr(transformers, named):
                return getattr(transformers, named)
    default = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    return getattr(transformers, default) if isinstance(default, str) and hasattr(transformers, default) else None


def processor_files(model_dir: str | Path) -> list[Path]:
    """The tokenizer and processor files of ``model_dir`` (what a downloaded export needs beside weights)."""
    root = Path(model_dir)
    return sorted({p for pattern in PROCESSOR_FILE_PATTERNS for p in root.glob(pattern) if p.is_file()})


def _without_videos(cls: Any, model_dir: str | Path) -> Any:
    """``cls`` from the directory's tokenizer and image processor, with ``NoVideos`` for its video processor."""
    from transformers import AutoImageProcessor, AutoTokenizer

    parts = {"tokenizer": lambda: AutoTokenizer.from_pretrained(model_dir),
             "image_processor": lambda: AutoImageProcessor.from_pretrained(model_dir),
             "video_processor": NoVideos}
    unknown = [name for name in cls.get_attributes() if name not in parts]
    if unknown:
        raise TrainingFailed(f"{cls.__name__} needs {', '.join(unknown)} besides its tokenizer and image processor, "
                             "which tunery cannot build without torchvision", user_error=True)
    settings, extra = cls.get_processor_dict(model_dir)
    return cls.from_args_and_dict([parts[name]() for name in cls.get_attributes()], settings, **extra)


class NoVideos(VideoProcessorMixin):  # type: ignore[misc]
    """Stands in for a processor's video processor where torchvision is missing: tunery takes images only."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("this model's processor was built without its video processor (torchvision is not "
                         "installed): tunery takes images, not videos")


def renders_string_content(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template prints a message whose content is a string. Some VLM templates
    (SmolVLM's, Idefics3's) print only content parts and silently drop string contents; messages for them
    need their text as ``{"type": "text"}`` parts. True where the probe cannot tell (a template that refuses
    a lone user message, say)."""
    from jinja2 import TemplateError

    def prints(content: Any) -> bool | None:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        except (TemplateError, ValueError, TypeError, KeyError, IndexError):
            return None
        return _PROBE in str(text)

    return prints(_PROBE) is not False or prints([{"type": "text", "text": _PROBE}]) is not True


_PROBE = "tunery probe text"


def content_as_parts(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each string content as one ``{"type": "text"}`` part (see ``renders_string_content``)."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m
            for m in messages]
