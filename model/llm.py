"""The language model: visual tokens + instruction in, a description (and its hidden
states) out.

A Qwen2-family causal LM from ``transformers`` (randomly initialised at the tiny sizes,
or a local Qwen2.5 folder), with LoRA on q_proj/v_proj through ``peft``. Prompts are
ChatML; the image enters as embeddings spliced where the ``<image>`` marker sits in the
user turn, so no vocabulary entry is reserved for it. Sequences are left-padded with
explicit position ids, so a tile's tokens sit at the same positions whatever else is in
the batch. Generation is a small explicit loop over the KV cache (rather than
``generate``) because SPEX needs the final-layer hidden state of every response token,
including the last one, and the loop gives that without a second pass.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedTokenizerBase, Qwen2Config, Qwen2ForCausalLM

from model.config import LLMConfig
from model.tokenizer import load_tokenizer, train_tokenizer

IMAGE_MARKER = "<image>"


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings. Greedy (the default) is deterministic; sampling (:meth:`paper`)
    uses the paper's temperature 0.3 / top-p 0.9 with a seeded generator.

    Controls against the loops a small LM falls into ("In total, vegetation regions.
    In total, vegetation regions."): ``repetition_penalty`` (CTRL style: logits of the
    tokens already generated are divided, or multiplied when negative, by it) and
    ``no_repeat_ngram_size`` (n > 0: a token that would complete an n-gram already
    generated in this description is never chosen); both act on the generated tokens
    only, never on the prompt. ``only_requested_target`` keeps a description from naming
    another target than the one asked for (a statement false by definition): the caller
    passes, per tile, the token sequences of the other targets' names, which are then
    never completed. A model's defaults for the last two come from its configuration
    (``SpexConfig``), so checkpoints written before they existed decode exactly as
    before. The penalty stays off by default: templated descriptions reuse "the", "in",
    "of" in every sentence, and penalising them bends the wording away from what the
    model was trained to write.
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 0.3
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # Never write another target's name (the caller passes the words to avoid per tile).
    only_requested_target: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0 or self.temperature <= 0 or self.repetition_penalty <= 0:
            raise ValueError(f"invalid sampling settings: {self}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")

    @classmethod
    def for_model(cls, cfg: Any, **overrides: Any) -> GenerationSettings:
        """Greedy with the token budget and n-gram block of a model's configuration."""
        base = {
            "max_new_tokens": cfg.max_new_tokens,
            "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
            "only_requested_target": cfg.only_requested_target,
        }
        return cls(**(base | overrides))

    @classmethod
    def paper(cls, max_new_tokens: int = 32, seed: int = 0) -> GenerationSettings:
        """The SPEX paper's sampling: temperature 0.3, top-p 0.9, a repetition penalty
        (the paper names one without its value; 1.1, a common choice, is used here).
        Seeded, so a rerun with the same seed and batch repeats itself."""
        return cls(
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=0.3,
            top_p=0.9,
            repetition_penalty=1.1,
            seed=seed,
        )


@dataclass
class PackedPrompt:
    """Left-padded model inputs plus where the response tokens are."""

    embeds: torch.Tensor  # (B, L, D)
    attention_mask: torch.Tensor  # (B, L) long
    position_ids: torch.Tensor  # (B, L)
    labels: torch.Tensor | None  # (B, L), -100 outside the response
    response_mask: torch.Tensor | None  # (B, L) bool, True on response tokens


@dataclass
class Generated:
    """Output of :meth:`LanguageModel.generate`."""

    tokens: torch.Tensor  # (B, T) generated ids (pad after the end)
    hidden: torch.Tensor  # (B, T, D) final-layer hidden state of each generated token
    mask: torch.Tensor  # (B, T) bool, True on real response tokens (incl. the end token)
    texts: list[str]


class LanguageModel(nn.Module):
    """Qwen2 causal LM + LoRA + tokenizer."""

    def __init__(self, cfg: LLMConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        super().__init__()
        if tokenizer is None:
            tokenizer = (
                load_tokenizer(cfg.pretrained_path)
                if cfg.pretrained_path
                else train_tokenizer(cfg.vocab_size)
            )
        self.tokenizer = tokenizer
        if cfg.pretrained_path:
            base = Qwen2ForCausalLM.from_pretrained(
                cfg.pretrained_path, local_files_only=True, dtype=torch.float32
            )
        else:
            base = Qwen2ForCausalLM(self._qwen_config(cfg))
        if len(tokenizer) > base.config.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} entries but the LM vocabulary is "
                f"{base.config.vocab_size}"
            )
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            bias="none",
        )
        with warnings.catch_warnings():
            # peft 0.21 calls a transformers 5 method that now warns of its own rename.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            self.peft: PeftModel = get_peft_model(base, lora)
        self.hidden_size: int = base.config.hidden_size
        eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
        assert isinstance(eos, int)  # one token in, one id out
        self.eos_id: int = eos
        self.pad_id: int = tokenizer.pad_token_id
        self._prompt_cache: dict[tuple[str, str], tuple[list[int], list[int]]] = {}

    @staticmethod
    def _qwen_config(cfg: LLMConfig) -> Qwen2Config:
        if cfg.hf_config is not None:
            d = {k: v for k, v in cfg.hf_config.items() if k != "model_type"}
            return Qwen2Config(**d)
        return Qwen2Config(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_key_value_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            rope_theta=cfg.rope_theta,  # type: ignore[call-arg]  # a **kwargs of v5 configs
            rms_norm_eps=cfg.rms_norm_eps,
            tie_word_embeddings=cfg.tie_word_embeddings,
        )

    # -- pieces -------------------------------------------------------------------------
    @property
    def causal_lm(self) -> Qwen2ForCausalLM:
        """The LoRA-injected Qwen2ForCausalLM inside the peft wrapper."""
        return cast(Qwen2ForCausalLM, self.peft.base_model.model)  # peft's wrapped model

    def hf_config(self) -> dict[str, Any]:
        return self.causal_lm.config.to_dict()

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.get_input_embeddings()(ids)

    def _prompt_ids(self, system: str, instruction: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the image in the ChatML prompt (cached)."""
        key = (system, instruction)
        if key not in self._prompt_cache:
            text = self.tokenizer.apply_chat_template(
                [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"{IMAGE_MARKER}\n{instruction}"},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
            assert isinstance(text, str)  # tokenize=False: the prompt as text
            before, after = text.split(IMAGE_MARKER, 1)
            enc = self.tokenizer(
                [before, after], add_special_tokens=False, return_attention_mask=False
            )["input_ids"]
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            self._prompt_cache[key] = (list(enc[0]), list(enc[1]))
        return self._prompt_cache[key]

    def pack(
        self,
        visual: torch.Tensor,
        instructions: list[str],
        system: str,
        responses: list[str] | None = None,
    ) -> PackedPrompt:
        """[ChatML prefix, visual tokens, instruction + assistant header, response?],
        left-padded. With ``responses`` (training) the response ids end with the end
        token and are the only labelled positions."""
        device = visual.device
        b, n, _ = visual.shape
        rows: list[tuple[list[int], list[int], list[int]]] = []
        for i in range(b):
            before, after = self._prompt_ids(system, instructions[i])
            resp: list[int] = []
            if responses is not None:
                resp = self.tokenizer(responses[i], add_special_tokens=False)["input_ids"]
                resp = [*resp, self.eos_id]
            rows.append((before, after, resp))
        lengths = [len(a) + n + len(c) + len(r) for a, c, r in rows]
        total = max(lengths)
        pad_embed = self.embed(torch.tensor([self.pad_id], device=device))[0]
        embeds, attn, labels, resp_mask = [], [], [], []
        for i, ((before, after, resp), length) in enumerate(zip(rows, lengths, strict=True)):
            pad = total - length
            ids_before = torch.tensor(before, device=device, dtype=torch.long)
            ids_after = torch.tensor(after + resp, device=device, dtype=torch.long)
            parts = [
                pad_embed.expand(pad, -1),
                self.embed(ids_before),
                visual[i].to(pad_embed.dtype),
                self.embed(ids_after),
            ]
            embeds.append(torch.cat(parts, dim=0))
            attn.append(torch.tensor([0] * pad + [1] * length, device=device))
            lab = torch.full((total,), -100, dtype=torch.long, device=device)
            rm = torch.zeros(total, dtype=torch.bool, device=device)
            if resp:
                lab[total - len(resp) :] = torch.tensor(resp, device=device)
                rm[total - len(resp) :] = True
            labels.append(lab)
            resp_mask.append(rm)
        attention_mask = torch.stack(attn)
        return PackedPrompt(
            embeds=torch.stack(embeds),
            attention_mask=attention_mask,
            position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
            labels=torch.stack(labels) if responses is not None else None,
            response_mask=torch.stack(resp_mask) if responses is not None else None,
        )

    # -- passes -------------------------------------------------------------------------
    def hidden_states(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
    ) -> tuple[torch.Tensor, Any]:
        """Final-layer (normed) hidden states and the KV cache, without the LM head (its
        vocabulary-sized output is only computed where needed)."""
        out = self.causal_lm.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=True,
        )
        return out.last_hidden_state, out.past_key_values

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.causal_lm.lm_head(hidden)

    def text_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over the labelled (response) positions."""
        logits = self.logits(hidden[:, :-1]).float()
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )

    def prefill(self, prompt: PackedPrompt) -> tuple[torch.Tensor, Any]:
        """Run the prompt once; returns the next-token logits (B, V) and the KV cache."""
        hidden, cache = self.hidden_states(
            prompt.embeds, prompt.attention_mask, prompt.position_ids
        )
        return self.logits(hidden[:, -1]).float(), cache

    @torch.no_grad()
    def generate(
        self,
        prompt: PackedPrompt,
        settings: GenerationSettings,
        timings: dict[str, float] | None = None,
        *,
        decode_text: bool = True,
        bad_words: list[list[list[int]]] | None = None,
    ) -> Generated:
        """Decode up to ``max_new_tokens`` with the KV cache. Every generated token
        (including the end token, or the last one when the budget runs out) is fed back
        once, which yields its final-layer hidden state for the TCP. ``decode_text``
        False skips turning the tokens into text (``texts`` are then empty strings):
        the tokens themselves are still chosen, since the mask is decoded from them.
        ``bad_words`` (per row, token sequences) are never completed in that row."""
        from model.timing import stage_timer

        with stage_timer(timings, "llm_prefill", prompt.embeds):
            logits, cache = self.prefill(prompt)
        with stage_timer(timings, "llm_generate", prompt.embeds):
            return self._decode_loop(prompt, logits, cache, settings, decode_text, bad_words)

    def _decode_loop(
        self,
        prompt: PackedPrompt,
        logits: torch.Tensor,
        cache: Any,
        settings: GenerationSettings,
        decode_text: bool = True,
        bad_words: list[list[list[int]]] | None = None,
    ) -> Generated:
        device = logits.device
        b = logits.shape[0]
        gen = torch.Generator(device=device).manual_seed(settings.seed)
        attn = prompt.attention_mask
        pos = prompt.position_ids[:, -1:]
        done = torch.zeros(b, dtype=torch.bool, device=device)
        tokens: list[torch.Tensor] = []
        hiddens: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for _ in range(settings.max_new_tokens):
            nxt = self._select(logits, tokens, settings, gen, bad_words)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            masks.append(~done)
            tokens.append(nxt)
            done = done | (nxt == self.eos_id)
            attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
            pos = pos + 1
            hidden, cache = self.hidden_states(self.embed(nxt[:, None]), attn, pos, cache)
            hiddens.append(hidden[:, 0])
            if bool(done.all()):
                break
            logits = self.logits(hidden[:, 0]).float()
        tok = torch.stack(tokens, dim=1)
        mask = torch.stack(masks, dim=1)
        texts = [
            str(self.tokenizer.decode(row[m].tolist(), skip_special_tokens=True)).strip()
            if decode_text
            else ""
            for row, m in zip(tok, mask, strict=True)
        ]
        return Generated(tokens=tok, hidden=torch.stack(hiddens, dim=1), mask=mask, texts=texts)

    @staticmethod
    def _select(
        logits: torch.Tensor,
        previous: list[torch.Tensor],
        s: GenerationSettings,
        gen: torch.Generator,
        bad_words: list[list[list[int]]] | None = None,
    ) -> torch.Tensor:
        """Next token: repetition penalty (CTRL style) on already generated ids, n-gram
        blocking, then greedy, or temperature + nucleus sampling with the seeded
        generator."""
        logits = logits.clone()
        if s.repetition_penalty != 1.0 and previous:
            seen = torch.stack(previous, dim=1)
            vals = logits.gather(1, seen)
            vals = torch.where(vals > 0, vals / s.repetition_penalty, vals * s.repetition_penalty)
            logits.scatter_(1, seen, vals)
        n = s.no_repeat_ngram_size
        if n and len(previous) >= n:
            history = torch.stack(previous, dim=1).tolist()
            for row, banned in enumerate(banned_ngram_tokens(history, n)):
                if banned:
                    logits[row, banned] = float("-inf")
        if bad_words:
            history = torch.stack(previous, dim=1).tolist() if previous else [[]] * len(logits)
            for row, banned in enumerate(bad_word_tokens(history, bad_words)):
                if banned:
                    logits[row, banned] = float("-inf")
        if not s.do_sample:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits / max(s.temperature, 1e-5), dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(-1)
        sorted_p = torch.where(cum - sorted_p > s.top_p, torch.zeros_like(sorted_p), sorted_p)
        choice = torch.multinomial(sorted_p, 1, generator=gen)
        return order.gather(1, choice)[:, 0]


def banned_ngram_tokens(history: list[list[int]], n: int) -> list[list[int]]:
    """Per row, the tokens that would complete an n-gram already present in that row's
    ``history`` (the generated ids so far): the n-gram blocking of
    :class:`GenerationSettings`. Rows are independent; pads after a row's end never
    matter because a finished row's choice is replaced by the pad anyway."""
    out: list[list[int]] = []
    for ids in history:
        if len(ids) < n:
            out.append([])
            continue
        prefix = tuple(ids[len(ids) - n + 1 :])
        banned = {
            ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == prefix
        }
        out.append(sorted(banned))
    return out


def bad_word_tokens(history: list[list[int]], bad_words: list[list[list[int]]]) -> list[list[int]]:
    """Per row, the tokens that would complete one of that row's ``bad_words`` (token
    sequences) given the ``history`` generated so far: a one-token word is always
    banned, a longer one only right after its first tokens."""
    out: list[list[int]] = []
    for ids, words in zip(history, bad_words, strict=True):
        banned = {
            w[-1] for w in words if w and (len(w) == 1 or ids[len(ids) - len(w) + 1 :] == w[:-1])
        }
        out.append(sorted(banned))
    return out
