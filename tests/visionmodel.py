"""A tiny random-weight Qwen2-VL model for the vision tests, built with mlx-vlm's own model
classes and saved as a Hugging Face folder with its processor (tokenizer, chat template and
image processor config written here: nothing is downloaded).

`make_tiny_vlm(folder)` writes config.json, model.safetensors, the tokenizer files,
chat_template.jinja and preprocessor_config.json: under 1 MB. Images are cut into 14-pixel
patches merged 2 x 2, so a 56 x 56 image takes 4 prompt tokens; `max_pixels` caps an image at
about 112 x 112 (16 tokens) so tests stay fast on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinymodel import CORPUS, train_bpe

#: Qwen2-VL's special tokens, in the order their ids follow the trained vocabulary
VISION_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

#: Qwen2-VL's chat template, cut down: text parts as they are, an image part as the image's
#: placeholder between its start and end markers
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tiny_vlm(
    folder: Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vision_depth: int = 1,
    vision_width: int = 32,
    max_pixels: int = 112 * 112,
    wide: bool = True,
) -> Path:
    """Write a random-weight Qwen2-VL folder that mlx_vlm.load opens. Runs mlx on the calling
    thread; tests call it from fixtures, never while an engine uses the arrays. The benchmark
    (`scripts/benchmarks/fig_v.py`) builds a larger one; `wide=False` keeps mlx-vlm's own
    initialisation (see below)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models import qwen2_vl
    from mlx_vlm.utils import update_module_configs
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tok = train_bpe(CORPUS, vocab_size=320)
    tok.add_special_tokens(VISION_SPECIAL)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = VLM_CHAT_TEMPLATE
    fast.save_pretrained(str(folder))
    ids = {name: tok.token_to_id(name) for name in VISION_SPECIAL}
    vocab = int(tok.get_vocab_size())
    heads = hidden // 16  # heads of 16: the mrope sections below split 8 frequencies
    config = {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        "tie_word_embeddings": True,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "eos_token_id": tok.token_to_id("<|im_end|>"),
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": vision_depth,
            "embed_dim": vision_width,
            "hidden_size": hidden,
            "num_heads": max(vision_width // 16, 2),
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
        },
    }
    mx.random.seed(seed)
    params = json.loads(json.dumps(config))  # from_dict adds `text_config` to what it gets
    model_config = qwen2_vl.ModelConfig.from_dict(params)
    model_config = update_module_configs(model_config, qwen2_vl, params, ["text", "vision"])
    model = qwen2_vl.Model(model_config)
    # Weights drawn wide (std 1): the default init's small weights make a model that repeats
    # one token whatever the image; these answers change with the image.
    weights = {
        name: mx.random.normal(value.shape).astype(value.dtype)
        if wide and value.ndim >= 2
        else value
        for name, value in tree_flatten(model.parameters())
    }
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "chat_template.jinja").write_text(VLM_CHAT_TEMPLATE)
    preprocessor = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": 56 * 56,
        "max_pixels": max_pixels,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    return folder
