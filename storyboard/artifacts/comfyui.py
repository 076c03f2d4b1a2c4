"""A trained folder in ComfyUI: the graph that draws with it, in the two forms ComfyUI reads.

``api_workflow`` is the API form ComfyUI's ``POST /prompt`` takes (and its *Export (API)* writes):
``{"4": {"class_type": "CheckpointLoaderSimple", "inputs": {...}}, ...}``, a link being
``[node id, output slot]``. The graph is ComfyUI's default text-to-image one with a LoRA::

    CheckpointLoaderSimple -> LoraLoader (the trained file) -> CLIPTextEncode x2 (the shot prompt with
    embedding:fs_trg, the negative) -> KSampler (EmptyLatentImage) -> VAEDecode -> SaveImage

``ui_workflow`` turns it into the editor's form (LiteGraph, schema version 0.4: nodes with slots,
widget values and positions, links as ``[id, from, slot, to, slot, type]``), the ``workflow`` text chunk
a PNG carries so that dropping it on ComfyUI opens the graph; the ``prompt`` chunk holds the API form
(ComfyUI's own ``SaveImage`` writes the same two chunks).

Both forms are checked against ``data/comfyui_nodes.json`` (the node signatures of the ComfyUI version
named there) before they are written: every node type known, every required input present, every
link pointing at an existing output of the input's type, every widget value of its type, within its
limits and (samplers, schedulers) one of ComfyUI's choices. A failed check is a bug here, so it raises.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from storyboard.artifacts.layout import COMFYUI_WORKFLOW_FILE
from storyboard.core.records import atomic_write_json

SEED_CONTROL = "fixed"  # the value ComfyUI's editor keeps after a seed widget: the seed stays as written


@lru_cache(maxsize=1)
def node_table() -> dict:
    """``data/comfyui_nodes.json``: the node signatures (and the ComfyUI version they come from)."""
    text = resources.files("storyboard.artifacts").joinpath("data/comfyui_nodes.json").read_text(encoding="utf-8")
    return json.loads(text)


def comfyui_version() -> str:
    return node_table()["comfyui_version"]


# --------------------------------------------------------------------------------------------
# The prompt in ComfyUI's form
# --------------------------------------------------------------------------------------------
def comfyui_prompt(prompt: str, stems: Mapping[str, str]) -> str:
    """Each trained token as ComfyUI names its embedding file: ``<fs_trg>, full shot`` ->
    ``embedding:fs_trg, full shot``. ComfyUI recognises ``embedding:`` only at the start of the text
    or after a space or line break, and reads the name up to the next space (a trailing comma is
    dropped), so the word is set off by spaces where the prompt did not do it."""
    if not stems:
        return prompt
    pattern = re.compile("|".join(re.escape(t) for t in sorted(stems, key=len, reverse=True)))

    def replace(match: re.Match) -> str:
        before = match.string[match.start() - 1] if match.start() else " "
        after = match.string[match.end()] if match.end() < len(match.string) else " "
        word = f"embedding:{stems[match.group()]}"
        return ("" if before.isspace() else " ") + word + ("" if after.isspace() or after == "," else " ")

    return pattern.sub(replace, prompt)


# --------------------------------------------------------------------------------------------
# The API form
# --------------------------------------------------------------------------------------------
@dataclass
class WorkflowSettings:
    """What the graph draws; ``lora_name`` None: no LoraLoader (the bare base)."""

    ckpt_name: str
    prompt: str  # ComfyUI's form (``comfyui_prompt``)
    negative: str = ""
    lora_name: str | None = None
    lora_scale: float = 1.0
    seed: int = 0
    steps: int = 30
    cfg: float = 7.5
    sampler_name: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    filename_prefix: str = "storyboard"
    prompt_title: str = "shot prompt"


def api_workflow(s: WorkflowSettings) -> dict[str, dict]:
    """The API form (module doc). Node ids follow ComfyUI's default graph; the LoRA loader is 10."""
    model, clip = ["4", 0], ["4", 1]
    graph: dict[str, dict] = {
        "4": _node("CheckpointLoaderSimple", "Load Checkpoint (the base model)", ckpt_name=s.ckpt_name)}
    if s.lora_name:
        graph["10"] = _node("LoraLoader", "Load LoRA (trained)", model=model, clip=clip, lora_name=s.lora_name,
                            strength_model=float(s.lora_scale), strength_clip=float(s.lora_scale))
        model, clip = ["10", 0], ["10", 1]
    graph.update({
        "6": _node("CLIPTextEncode", s.prompt_title, text=s.prompt, clip=clip),
        "7": _node("CLIPTextEncode", "negative prompt", text=s.negative, clip=clip),
        "5": _node("EmptyLatentImage", "Empty Latent Image", width=int(s.width), height=int(s.height), batch_size=1),
        "3": _node("KSampler", "KSampler", model=model, seed=int(s.seed), steps=int(s.steps), cfg=float(s.cfg),
                   sampler_name=s.sampler_name, scheduler=s.scheduler, positive=["6", 0], negative=["7", 0],
                   latent_image=["5", 0], denoise=1.0),
        "8": _node("VAEDecode", "VAE Decode", samples=["3", 0], vae=["4", 2]),
        "9": _node("SaveImage", "Save Image", images=["8", 0], filename_prefix=s.filename_prefix),
    })
    problems = check_api_workflow(graph)
    if problems:
        raise ValueError("ComfyUI workflow does not fit the node table: " + "; ".join(problems))
    return graph


def _node(class_type: str, title: str, **inputs: Any) -> dict:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}


def _is_link(value: object) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def check_api_workflow(graph: Mapping[str, Any], table: Mapping | None = None) -> list[str]:
    """Every problem ComfyUI's ``/prompt`` validation would find offline (module doc); [] when none."""
    table = table or node_table()
    nodes, widget_types = table["nodes"], set(table["widget_types"])
    problems: list[str] = []
    if not any(nodes.get(n.get("class_type"), {}).get("output_node") for n in graph.values() if isinstance(n, dict)):
        problems.append("no output node (SaveImage)")
    for node_id, node in graph.items():
        kind = node.get("class_type") if isinstance(node, dict) else node
        spec = nodes.get(kind) if isinstance(kind, str) else None
        if spec is None:
            problems.append(f"node {node_id}: unknown type {kind!r}")
            continue
        given = node.get("inputs", {})
        for extra in sorted(set(given) - {i["name"] for i in spec["inputs"]}):
            problems.append(f"node {node_id} ({node['class_type']}): no input named {extra!r}")
        for inp in spec["inputs"]:
            where = f"node {node_id} ({node['class_type']}) input {inp['name']!r}"
            if inp["name"] not in given:
                problems.append(f"{where}: required, missing")
            elif inp["type"] in widget_types:
                problems += [f"{where}: {p}" for p in _widget_problems(inp, given[inp["name"]], table)]
            else:
                problems += [f"{where}: {p}" for p in _link_problems(inp, given[inp["name"]], graph, nodes)]
    return problems


def _link_problems(inp: Mapping, value: object, graph: Mapping, nodes: Mapping) -> list[str]:
    if not _is_link(value):
        return [f"needs a link [node id, output slot] to a {inp['type']} output, got {value!r}"]
    source = graph.get(value[0])
    if not isinstance(source, dict) or source.get("class_type") not in nodes:
        return [f"links to node {value[0]!r}, which is not in the graph"]
    outputs = nodes[source["class_type"]]["outputs"]
    if not 0 <= value[1] < len(outputs):
        return [f"links to output {value[1]} of {source['class_type']}, which has {len(outputs)}"]
    if outputs[value[1]] != inp["type"]:
        return [f"needs {inp['type']} but output {value[1]} of {source['class_type']} is {outputs[value[1]]}"]
    return []


def _widget_problems(inp: Mapping, value: object, table: Mapping) -> list[str]:
    kind = inp["type"]
    if _is_link(value):
        return [f"a {kind} widget holds a link"]
    ok = {"INT": isinstance(value, int) and not isinstance(value, bool),
          "FLOAT": isinstance(value, (int, float)) and not isinstance(value, bool),
          "STRING": isinstance(value, str), "COMBO": isinstance(value, str),
          "BOOLEAN": isinstance(value, bool)}.get(kind, False)
    if not ok:
        return [f"{value!r} is not a {kind}"]
    problems = []
    if "min" in inp and value < inp["min"] or "max" in inp and value > inp["max"]:
        problems.append(f"{value!r} outside [{inp.get('min')}, {inp.get('max')}]")
    if "step" in inp and kind == "INT" and (value - inp.get("min", 0)) % inp["step"]:
        problems.append(f"{value!r} is not a multiple of {inp['step']}")
    choices = table.get("choices", {}).get(inp.get("choices", ""))
    if choices is not None and value not in choices:
        problems.append(f"{value!r} is not one of ComfyUI's {inp['choices']}")
    return problems


def write_workflow(folder: Path, settings: WorkflowSettings) -> Path:
    """``comfyui_workflow.json`` (the API form) into a trained folder."""
    path = Path(folder) / COMFYUI_WORKFLOW_FILE
    atomic_write_json(path, api_workflow(settings))
    return path


# --------------------------------------------------------------------------------------------
# The editor's form (the PNG's ``workflow`` chunk)
# --------------------------------------------------------------------------------------------
_COLUMNS = {"CheckpointLoaderSimple": (0, 0), "LoraLoader": (1, 0), "CLIPTextEncode": (2, 0),
            "EmptyLatentImage": (2, 2), "KSampler": (3, 0), "VAEDecode": (4, 0), "SaveImage": (5, 0)}


def _order(graph: Mapping[str, dict]) -> list[str]:
    """Node ids, each after the nodes it reads from (the editor's execution ``order``)."""
    done: list[str] = []
    while len(done) < len(graph):
        for node_id in sorted(graph, key=int):
            sources = [v[0] for v in graph[node_id]["inputs"].values() if _is_link(v)]
            if node_id not in done and all(s in done for s in sources):
                done.append(node_id)
                break
        else:
            raise ValueError("the workflow has a cycle")
    return done


def ui_workflow(graph: Mapping[str, dict], table: Mapping | None = None) -> dict:
    """The API form as the ComfyUI editor saves a graph (schema 0.4), for a PNG's ``workflow`` chunk."""
    table = table or node_table()
    specs, widget_types = table["nodes"], set(table["widget_types"])
    order = _order(graph)
    nodes, links = {}, []
    for rank, node_id in enumerate(order):
        api = graph[node_id]
        spec = specs[api["class_type"]]
        col, row = _COLUMNS.get(api["class_type"], (rank, 0))
        row += sum(1 for other in order[:rank] if graph[other]["class_type"] == api["class_type"])
        widgets: list = []
        for inp in spec["inputs"]:
            if inp["type"] in widget_types:
                widgets.append(api["inputs"][inp["name"]])
                if inp.get("control_after_generate"):
                    widgets.append(SEED_CONTROL)
        nodes[node_id] = {
            "id": int(node_id), "type": api["class_type"], "pos": [40 + 340 * col, 60 + 260 * row],
            "size": [300, 200], "flags": {}, "order": rank, "mode": 0,
            "inputs": [{"name": i["name"], "type": i["type"], "link": None}
                       for i in spec["inputs"] if i["type"] not in widget_types],
            "outputs": [{"name": t, "type": t, "links": [], "slot_index": k} for k, t in enumerate(spec["outputs"])],
            "title": api.get("_meta", {}).get("title", api["class_type"]),
            "properties": {"Node name for S&R": api["class_type"]}, "widgets_values": widgets,
        }
    for node_id in order:
        target = nodes[node_id]
        for slot, inp in enumerate(target["inputs"]):
            origin_id, origin_slot = graph[node_id]["inputs"][inp["name"]]
            link_id = len(links) + 1
            links.append([link_id, int(origin_id), origin_slot, int(node_id), slot, inp["type"]])
            inp["link"] = link_id
            nodes[origin_id]["outputs"][origin_slot]["links"].append(link_id)
    return {"last_node_id": max(int(n) for n in graph), "last_link_id": len(links),
            "nodes": [nodes[n] for n in order], "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def check_ui_workflow(workflow: Mapping[str, Any], table: Mapping | None = None) -> list[str]:
    """What the editor's loader (its schema 0.4) and the node table require of the editor's form."""
    table = table or node_table()
    specs, widget_types = table["nodes"], set(table["widget_types"])
    problems = [f"missing {k!r}" for k in ("last_node_id", "last_link_id", "nodes", "links", "version")
                if k not in workflow]
    if problems:
        return problems
    nodes = {n.get("id"): n for n in workflow["nodes"]}
    for node in workflow["nodes"]:
        missing = [k for k in ("id", "type", "pos", "size", "flags", "order", "mode", "properties") if k not in node]
        spec = specs.get(node.get("type"))
        if missing or spec is None:
            problems.append(f"node {node.get('id')}: " + (f"missing {missing}" if missing else "unknown type"))
            continue
        n_widgets = sum(1 + bool(i.get("control_after_generate")) for i in spec["inputs"] if i["type"] in widget_types)
        if len(node.get("widgets_values", [])) != n_widgets:
            problems.append(f"node {node['id']} ({node['type']}): {len(node.get('widgets_values', []))} widget values, "
                            f"ComfyUI shows {n_widgets}")
        linked = [i["name"] for i in spec["inputs"] if i["type"] not in widget_types]
        if [i["name"] for i in node.get("inputs", [])] != linked:
            problems.append(f"node {node['id']} ({node['type']}): inputs {[i['name'] for i in node.get('inputs', [])]}"
                            f", ComfyUI has {linked}")
    problems += _ui_link_problems(workflow["links"], nodes, specs)
    return problems


def _ui_link_problems(links: Sequence, nodes: Mapping, specs: Mapping) -> list[str]:
    problems = []
    for link in links:
        if not (isinstance(link, list) and len(link) == 6):
            problems.append(f"link {link!r} is not [id, from, slot, to, slot, type]")
            continue
        link_id, origin, origin_slot, target, target_slot, kind = link
        if origin not in nodes or target not in nodes:
            problems.append(f"link {link_id}: node {origin if origin not in nodes else target} does not exist")
            continue
        outputs = specs[nodes[origin]["type"]]["outputs"]
        inputs = nodes[target].get("inputs", [])
        if not (0 <= origin_slot < len(outputs) and 0 <= target_slot < len(inputs)):
            problems.append(f"link {link_id}: slot out of range")
            continue
        if not (outputs[origin_slot] == kind == inputs[target_slot]["type"]):
            problems.append(f"link {link_id}: {outputs[origin_slot]} output into a {inputs[target_slot]['type']} input")
        if inputs[target_slot].get("link") != link_id or link_id not in nodes[origin]["outputs"][origin_slot]["links"]:
            problems.append(f"link {link_id}: the nodes' slots do not name it")
    return problems
