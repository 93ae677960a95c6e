"""Tiny random-weight vision-language models (LLaVA, Qwen2-VL, BLIP-2, InstructBLIP) and a tiny
text LLM, built from configs fully offline, saved to a folder and loadable through
AutoProcessor / AutoModelForImageTextToText.

Used by tests/test_vdc.py and by ``benchmarks/vdc_throughput.py --tiny`` (CPU smoke run).
Nothing here downloads anything: the tokenizer is a word-level one trained on a fixed word
list, image processors are constructed from arguments.
"""
from __future__ import annotations

from pathlib import Path

WORDS = """
the a an of in on is are there does do this that it image picture photo object objects
describe detail what who which how you see main shown contain contains have has with and or
yes no yeah nope not can could answer question caption label refer same thing
airplane automobile bird cat deer dog frog horse ship truck car plane jet aircraft vehicle
wings wheels feathers fur whiskers antlers legs tail hooves mane sail water road sky
animal animals small large big white black red green blue brown gray dark light flying parked
boat vessel kitten puppy pony lorry toad fawn sparrow sedan beak ears eyes four two one three
write list give synonyms attributes visual please short brief describes words word
user assistant system
""".split()

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER : "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image> {% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    " {% else %}ASSISTANT : {% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}"
    "{% endif %}{% endfor %} </s> {% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT :{% endif %}"
)

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|> {{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|> <|image_pad|> <|vision_end|> "
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %} <|im_end|> "
    "{% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)

TEXT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} : {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant :{% endif %}"
)


def _tokenizer(specials: list[str], chat_template: str, **named):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    trainer = trainers.WordLevelTrainer(special_tokens=specials)
    corpus = WORDS + [w.capitalize() for w in WORDS] + list("?.,:!")
    tok.train_from_iterator([" ".join(corpus)] * 2, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", chat_template=chat_template, **named)
    return fast


def build_tiny_llava(path: str | Path, *, image_size: int = 28, seed: int = 0) -> Path:
    """A LLaVA-1.5-style model: CLIP vision tower (patch 14) + projector + Llama."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    path = Path(path)
    tok = _tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<image>"], LLAVA_TEMPLATE,
                     additional_special_tokens=["<image>"])
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=14, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_TEMPLATE,
                               num_additional_image_tokens=1, image_token="<image>")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_qwen2vl(path: str | Path, *, seed: int = 0) -> Path:
    """A Qwen2-VL-style model (M-RoPE, merged patches, chat template with vision tokens)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = Path(path)
    specials = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(specials, QWEN_TEMPLATE, additional_special_tokens=specials[4:])
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"])
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                               temporal_patch_size=2)
    try:  # the processor insists on a video processor (never used here)
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
        video_processor = Qwen2VLVideoProcessor()
    except Exception:  # pragma: no cover - depends on the transformers build
        video_processor = None
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=QWEN_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_text_llm(path: str | Path, *, seed: int = 0) -> Path:
    """A tiny Llama causal LM with a chat template (question generation / LLM judge)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = _tokenizer(["<pad>", "<unk>", "<s>", "</s>"], TEXT_TEMPLATE)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _tiny_lm_config(kind: str, tok):
    """The language model behind a tiny BLIP-2 / InstructBLIP: ``opt`` or ``llama`` (decoder-only)
    or ``t5`` (encoder-decoder, as in the Flan-T5 checkpoints)."""
    from transformers import LlamaConfig, OPTConfig, T5Config

    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if kind == "opt":
        return OPTConfig(vocab_size=len(tok), hidden_size=64, word_embed_proj_dim=64, ffn_dim=128,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256, **ids)
    if kind == "llama":
        return LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **ids)
    if kind == "t5":
        return T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                        num_heads=4, decoder_start_token_id=tok.pad_token_id, **ids)
    raise ValueError(f"language model {kind!r}: use opt, llama or t5")


def build_tiny_blip(path: str | Path, *, family: str = "blip-2", lm: str = "opt", image_size: int = 28,
                    num_query_tokens: int = 4, seed: int = 0) -> Path:
    """A BLIP-2 (``family="blip-2"``) or InstructBLIP (``family="instructblip"``) model: ViT
    (patch 14) + Q-Former with ``num_query_tokens`` learned queries + a tiny ``lm`` (see
    _tiny_lm_config). No chat template: these models take plain-text prompts. InstructBLIP's
    Q-Former also reads the question (its own tokenizer, saved under qformer_tokenizer/)."""
    import torch
    import transformers as tf

    if family not in ("blip-2", "instructblip"):
        raise ValueError(f"family {family!r}: use blip-2 or instructblip")
    blip2 = family == "blip-2"
    path = Path(path)
    tok = _tokenizer(["<pad>", "<unk>", "<s>", "</s>", "<image>"], None, additional_special_tokens=["<image>"])
    prefix = "Blip2" if blip2 else "InstructBlip"
    vision = getattr(tf, f"{prefix}VisionConfig")(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, image_size=image_size, patch_size=14)
    qformer = getattr(tf, f"{prefix}QFormerConfig")(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    encoder_hidden_size=32, max_position_embeddings=128,
                                                    pad_token_id=tok.pad_token_id)
    config = getattr(tf, f"{prefix}Config")(vision_config=vision, qformer_config=qformer,
                                            text_config=_tiny_lm_config(lm, tok), num_query_tokens=num_query_tokens,
                                            image_token_index=tok.convert_tokens_to_ids("<image>"))
    config.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = getattr(tf, f"{prefix}ForConditionalGeneration")(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    if lm == "t5":
        model.generation_config.decoder_start_token_id = tok.pad_token_id
        # T5 ties its input and output embeddings: with random weights the decoder's start token
        # (pad) then predicts itself forever; a zero pad row lets it emit words
        with torch.no_grad():
            model.language_model.get_input_embeddings().weight[tok.pad_token_id] = 0
    image_processor = tf.BlipImageProcessor(size={"height": image_size, "width": image_size})
    if blip2:
        processor = tf.Blip2Processor(image_processor=image_processor, tokenizer=tok,
                                      num_query_tokens=num_query_tokens)
    else:  # the Q-Former's tokenizer: the same word list (BERT's in the real checkpoints)
        qformer_tok = _tokenizer(["<pad>", "<unk>", "<s>", "</s>"], None)
        processor = tf.InstructBlipProcessor(image_processor=image_processor, tokenizer=tok,
                                             qformer_tokenizer=qformer_tok, num_query_tokens=num_query_tokens)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
