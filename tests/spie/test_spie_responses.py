"""Response writers and the quality loop; the HTTP writer against a real local server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.apg import INSTRUCTION_TEMPLATE
from pipeline.spie.errors import ResponseWriterError
from pipeline.spie.facts import sample_facts
from pipeline.spie.llm_client import ChatClient
from pipeline.spie.quality import LlmJudge, score_response, write_checked
from pipeline.spie.responses import AUXILIARY_INSTRUCTION, GroundedWriter, HttpWriter

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="module")
def berlin_windows() -> list[tuple[np.ndarray, np.ndarray]]:
    """Real (pixels, OSM labels) windows of the bundled Berlin sample, 96 px."""
    with rasterio.open(SAMPLES / "s2_l1c_berlin_20170216.tif") as src:
        pixels = src.read().astype(np.float32) / 10000
    with rasterio.open(SAMPLES / "s2_l1c_berlin_20170216_osm_labels.tif") as src:
        labels = src.read(1)
    return [
        (pixels[:, r : r + 96, c : c + 96], labels[r : r + 96, c : c + 96])
        for r in range(0, 768, 192)
        for c in range(0, 768, 192)
    ]


BANDS = ["B", "G", "R", "N", "S1", "S2"]
CLASSES = {"water": [7], "vegetation": [1, 2, 3, 4, 5], "building": [8]}


def _facts(window, target: str):
    pixels, labels = window
    mask = np.isin(labels, CLASSES[target]).astype(np.uint8)
    mask[labels == 0] = 255
    return sample_facts(mask, pixels, BANDS, target)


def test_grounded_responses_are_true_and_score_full_marks(berlin_windows) -> None:
    writer = GroundedWriter(seed=0)
    texts = set()
    for k, window in enumerate(berlin_windows):
        for target in CLASSES:
            facts = _facts(window, target)
            text = writer.write(facts, key=f"{k}:{target}", attempt=0)
            assert text == writer.write(facts, key=f"{k}:{target}", attempt=0)  # deterministic
            score, checks = score_response(text, facts)
            assert score == 1.0, (text, checks)
            assert facts.category in text.lower()
            texts.add(text.split(".")[0].replace(str(facts.n_regions), "N"))
    assert len(texts) > 5  # phrasing varies between samples


def test_false_statements_lose_points(berlin_windows) -> None:
    facts = next(f for f in (_facts(w, "water") for w in berlin_windows) if f.n_regions >= 2)
    wrong_count = f"There are {facts.n_regions + 3} separate water regions in this patch."
    assert score_response(wrong_count, facts)[1]["count"] is False
    huge = "A huge water body covers 97% of the patch in the top-left corner."
    score, checks = score_response(huge, facts)
    assert score < 0.8 and not checks["percent"]
    assert score_response("There is no water in this patch at all.", facts)[1]["absence"] is False


class _Server:
    """A tiny OpenAI-compatible chat server on 127.0.0.1 answering from a script."""

    def __init__(self, answers: list[str | int]) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                answer = outer.answers.pop(0) if outer.answers else "0.9"
                if isinstance(answer, int):
                    self.send_response(answer)
                    self.end_headers()
                    return
                data = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


@pytest.fixture
def server() -> Iterator:
    made: list[_Server] = []

    def start(answers: list[str | int]) -> _Server:
        s = _Server(answers)
        s.thread.start()
        made.append(s)
        return s

    yield start
    for s in made:
        s.httpd.shutdown()
        s.httpd.server_close()


def test_http_writer_sends_auxiliary_instruction_and_sampling_parameters(
    berlin_windows, server
) -> None:
    facts = next(f for f in (_facts(w, "water") for w in berlin_windows) if f.n_regions >= 2)
    good = GroundedWriter().write(facts, key="k", attempt=0)
    srv = server(["Water is everywhere: 99% of the patch is one huge lake.", good])
    writer = HttpWriter(ChatClient(srv.url, "local-vlm"), temperature=0.3, top_p=0.85)
    pixels = berlin_windows[0][0]
    outcome = write_checked(writer, facts, key="k", pixels=pixels, bands=BANDS)
    assert outcome.passed and outcome.attempts == 2 and outcome.text == good
    first = srv.requests[0]
    assert first["path"] == "/v1/chat/completions"
    body = first["body"]
    assert body["model"] == "local-vlm" and body["temperature"] == 0.3 and body["top_p"] == 0.85
    system = body["messages"][0]["content"]
    assert system == AUXILIARY_INSTRUCTION.format(category="water")
    assert "please provide a detailed description of them" not in system
    assert system != INSTRUCTION_TEMPLATE
    user = body["messages"][1]["content"]
    assert json.loads(user[0]["text"].split("\n", 1)[1])["number_of_regions"] == facts.n_regions
    assert user[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert srv.requests[1]["body"]["seed"] != body["seed"]  # a retry asks for a new sample


def test_llm_judge_uses_the_same_client_and_can_veto(berlin_windows, server) -> None:
    facts = _facts(berlin_windows[5], "vegetation")
    good = GroundedWriter().write(facts, key="k", attempt=0)
    srv = server(["0.2", "0.1", "0.95"])
    judge = LlmJudge(ChatClient(srv.url, "judge"))
    outcome = write_checked(GroundedWriter(), facts, key="k", judge=judge, max_attempts=3)
    assert outcome.attempts == 3 and outcome.passed and outcome.judge_score == 0.95
    assert good  # the rule score alone would have passed on the first attempt
    assert "Caption:" in srv.requests[0]["body"]["messages"][1]["content"]


def test_endpoint_errors_are_clear(berlin_windows, server) -> None:
    facts = _facts(berlin_windows[0], "water")
    srv = server([500])
    with pytest.raises(ResponseWriterError, match="answered HTTP 500"):
        HttpWriter(ChatClient(srv.url, "m")).write(facts, key="k", attempt=0)
    with pytest.raises(ResponseWriterError, match="unreachable"):
        HttpWriter(ChatClient("http://127.0.0.1:9/v1", "m", timeout=2)).write(
            facts, key="k", attempt=0
        )
