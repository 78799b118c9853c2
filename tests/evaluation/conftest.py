"""Small hand-made evaluation files in every supported format, and a fake OpenAI endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

MCQ = [
    {"id": 0, "subject": "临床医学", "question": "高血压患者首选的检查是", "A": "血压测量", "B": "胃镜",
     "C": "骨密度", "D": "听力测试", "answer": "A", "explanation": ""},
    {"id": 1, "subject": "临床医学", "question": "糖尿病的典型症状不包括", "A": "多饮", "B": "多尿",
     "C": "多食", "D": "脱发", "answer": "D", "explanation": ""},
    {"id": 2, "subject": "基础医学", "question": "人体最大的器官是", "A": "肝脏", "B": "皮肤",
     "C": "肺", "D": "心脏", "answer": "B", "explanation": ""},
]
MEDQA = [
    {"question": "治疗胃溃疡常用的药物是", "options": {"A": "奥美拉唑", "B": "阿司匹林", "C": "地塞米松",
     "D": "青霉素", "E": "维生素C"}, "answer": "A", "meta_info": "第一部分"},
    {"question": "缺铁性贫血的首选治疗是", "options": {"A": "输血", "B": "口服铁剂", "C": "脾切除",
     "D": "激素", "E": "化疗"}, "answer": "口服铁剂", "answer_idx": "B", "meta_info": "第二部分"},
]
NER = [
    {"originalText": "患者胃癌术后，行CT检查。", "entities": [
        {"start_pos": 2, "end_pos": 4, "label_type": "疾病和诊断"},
        {"start_pos": 8, "end_pos": 10, "label_type": "影像检查"}]},
    {"originalText": "口服奥美拉唑，腹部无压痛。", "entities": [
        {"start_pos": 2, "end_pos": 6, "label_type": "药物"},
        {"start_pos": 7, "end_pos": 9, "label_type": "解剖部位"}]},
]
QA = [
    {"question": "感冒了怎么办？", "answer": "注意休息，多喝水，必要时就医。"},
    {"question": "高血压要注意什么？", "answer": "低盐饮食，规律服药，监测血压。"},
]
DIALOGUE = [
    {"conversations": [
        {"from": "human", "value": "医生你好，我最近总是头痛。"},
        {"from": "gpt", "value": "头痛多久了？"},
        {"from": "human", "value": "大概一周。"},
        {"from": "gpt", "value": "建议先测量血压，必要时做头部CT。"}]},
]
CAMI = [
    {"id": i, "subscale": ["authoritarianism", "benevolence"][i % 2], "reverse": i % 3 == 0,
     "text": f"精神疾病患者应当被隔离，陈述{i}。"}
    for i in range(6)
]
MICA = [
    {"id": i, "subscale": "attitude", "reverse": i % 2 == 1, "text": f"我对精神疾病患者的看法{i}。"}
    for i in range(4)
]
SCALES = {
    "cami": {"points": 5, "labels": ["非常同意", "同意", "不确定", "不同意", "非常不同意"],
             "subscales": {"authoritarianism": "权威主义", "benevolence": "仁慈"}},
    "mica": {"points": 6, "labels": ["非常同意", "同意", "有点同意", "有点不同意", "不同意", "非常不同意"],
             "subscales": ["attitude"]},
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def eval_files(tmp_path_factory) -> dict[str, Path]:
    """One small file per task (plus few-shot examples, scales and a CMMLU-style CSV)."""
    root = tmp_path_factory.mktemp("eval_data")
    files = {
        "mcq": write_jsonl(root / "mcq.jsonl", MCQ),
        "mcq_dev": write_jsonl(root / "mcq_dev.jsonl", MCQ[::-1]),
        "medqa": write_jsonl(root / "medqa.jsonl", MEDQA),
        "ner": write_jsonl(root / "ner.jsonl", NER),
        "qa": write_jsonl(root / "qa.jsonl", QA),
        "dialogue": write_jsonl(root / "dialogue.jsonl", DIALOGUE),
        "cami": write_jsonl(root / "cami.jsonl", CAMI),
        "mica": write_jsonl(root / "mica.jsonl", MICA),
        "scales": root / "scales.json",
        "cmmlu": root / "clinical_knowledge.csv",
    }
    files["scales"].write_text(json.dumps(SCALES, ensure_ascii=False), encoding="utf-8")
    files["cmmlu"].write_text(
        ",Question,A,B,C,D,Answer\n0,发热最常见的原因是,感染,外伤,肿瘤,过敏,A\n1,成人正常心率为每分钟,20次,70次,150次,200次,B\n",
        encoding="utf-8",
    )
    return files


class _ChatHandler(BaseHTTPRequestHandler):
    """Answers `/v1/chat/completions` like an OpenAI server: NER prompts get an entity list."""

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(body)
        prompt = body["messages"][-1]["content"]
        content = "疾病和诊断：胃癌\n影像检查：CT" if "命名实体" in prompt else "注意休息，多喝水。"
        reply = {
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply, ensure_ascii=False).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def fake_openai():
    """A local OpenAI-compatible server; yields (base_url, list of received request bodies)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", server.requests
    server.shutdown()
    server.server_close()
