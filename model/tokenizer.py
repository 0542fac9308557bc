"""The project's own byte-level BPE tokenizer, trained offline.

Qwen2.5's tokenizer cannot be downloaded here, and a 151k-entry vocabulary would dwarf a
tiny LM anyway. The tokenizer is trained on text this module generates deterministically:
APG-style instructions (the paper's template with region attribute dicts), descriptive
sentences about the regions of every target of ``catalogs/targets.yaml``, and the SPIE
grounded writer's responses to random facts, so that the descriptions SPEX learns to
write take few tokens (every generated token costs a decoding step). Byte-level BPE means any later
text still encodes (no unknown token). The wrapper speaks ChatML, as the Qwen family
does, so the prompt format is the same whether the tiny tokenizer or a local Qwen2.5
tokenizer is used.
"""

from __future__ import annotations

import random
from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.targets import Target, load_targets

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# ChatML, as the Qwen family formats conversations.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SIZES = ("very tiny", "small", "somewhat large", "medium", "large", "very large", "huge")
# The APG's 3x3 grid names (pipeline.apg.LOCATION_NAMES), so real instructions and
# template responses (the tests' brief training) tokenize as compactly as this corpus.
LOCATIONS = (
    "top-left",
    "top-center",
    "top-right",
    "middle-left",
    "center",
    "middle-right",
    "bottom-left",
    "bottom-center",
    "bottom-right",
)
INSTRUCTION = (
    "Based on the provided image and the attributes of the {category} regions, please "
    "provide a detailed description of them: {prompt}"
)
SENTENCES = (
    "The image contains {n} {category} regions.",
    "A {size} {category} region is located at the {location} of the image.",
    "The largest {category} region is {size} and lies in the {location} part.",
    "Several {size} {category} patches are scattered around the {location}.",
    "There is no {category} in this image.",
    "The {category} area covers most of the scene, mainly at the {location}.",
    "A river crosses the image from the {location} towards the {location2}.",
    "Dense vegetation and fields surround the buildings near the {location}.",
    "Buildings form a compact urban block at the {location}, next to roads.",
    "A lake with a smooth shoreline appears at the {location}.",
)


def _attr_dict(rng: random.Random) -> str:
    coords = [round(rng.random(), 3) for _ in range(10)]
    return (
        "{'Size of area': '" + rng.choice(SIZES) + "', 'Centroid': ("
        f"{coords[0]:.3f}, {coords[1]:.3f}), 'Location': '{rng.choice(LOCATIONS)}', "
        f"'Bounding box': [({coords[2]:.3f}, {coords[3]:.3f}), ({coords[4]:.3f}, "
        f"{coords[5]:.3f}), ({coords[6]:.3f}, {coords[7]:.3f}), ({coords[8]:.3f}, "
        f"{coords[9]:.3f})]" + "}"
    )


def _random_facts(rng: random.Random, target: Target):
    """Plausible facts of one patch, for the grounded writer's phrasing (imported lazily:
    the tokenizer is needed without the data-set code only when training here)."""
    from pipeline.spie.facts import RegionFact, SampleFacts, SpectralContrast

    n = rng.choice([0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 7, 9, 12, 18, 25, 40])
    regions = []
    for _ in range(min(n, 10)):
        x0, y0 = round(rng.random() * 0.8, 2), round(rng.random() * 0.8, 2)
        x1, y1 = round(x0 + rng.random() * (1 - x0), 2), round(y0 + rng.random() * (1 - y0), 2)
        regions.append(
            RegionFact(
                size=rng.choice(SIZES),
                location=rng.choice(LOCATIONS),
                centroid=((x0 + x1) / 2, (y0 + y1) / 2),
                bbox=(x0, y0, x1, y1),
                area_ratio=rng.random() * 0.5,
                shape=rng.choice(("elongated", "compact", "irregular")),
            )
        )
    return SampleFacts(
        target=target.name,
        category=target.category,
        n_regions=n,
        regions=tuple(regions),
        positive_share=rng.random() if n else 0.0,
        valid_share=rng.choice([1.0, 1.0, rng.random()]),
        positive_px=n,
        spectral=SpectralContrast(target.index, rng.uniform(-0.6, 0.8), rng.uniform(-0.6, 0.8))
        if n and rng.random() < 0.8
        else None,
    )


def synthetic_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Deterministic training text for the tokenizer: APG-style instructions, free
    region sentences, and the grounded writer's responses to random facts (the phrasing
    SPEX is trained to produce, so its descriptions take few tokens)."""
    from pipeline.spie.responses import GroundedWriter

    rng = random.Random(seed)
    writer = GroundedWriter(seed=seed)
    targets = list(load_targets().values())
    lines: list[str] = []
    for i in range(n):
        target = rng.choice(targets)
        category = target.category
        regions = ", ".join(_attr_dict(rng) for _ in range(rng.randint(0, 3)))
        lines.append(INSTRUCTION.format(category=category, prompt=f"[{regions}]"))
        lines.append(
            rng.choice(SENTENCES).format(
                n=rng.randint(1, 10),
                category=category,
                size=rng.choice(SIZES),
                location=rng.choice(LOCATIONS),
                location2=rng.choice(LOCATIONS),
            )
        )
        lines.append(writer.write(_random_facts(rng, target), key=f"corpus|{i}"))
    return lines


@lru_cache(maxsize=4)
def train_tokenizer(vocab_size: int = 1024, seed: int = 0) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on :func:`synthetic_corpus` (deterministic, < 1 s)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed=seed), trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """PreTrainedTokenizerFast with the ChatML special tokens and template."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A local tokenizer folder (saved by this project or a Qwen2.5 folder); offline."""
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN
    if getattr(tok, "chat_template", None) is None:
        tok.chat_template = CHATML_TEMPLATE
    return tok
