"""Past one machine, measured on one: what Ray Data costs the finalize stage, and what the small copies
buy the clustering embedding. One table, both measurements in the same run.

    python bench/bench_ray.py                    # 120 records -> 1024 px squares with bubbles; 64 CLIP images
    python bench/bench_ray.py --records 240 --repeats 3

1. ``03_finalize_dataset`` at 1024 px with bubble removal, over the sample generator's 60 images (records
   repeated under new ids up to ``--records``): in process with one worker process per core, against the
   same stage on Ray Data (``--ray-address`` of a Ray started here on 127.0.0.1 with one CPU per core,
   already running, as a cluster is). Each run starts fresh (no resume) and includes what a real run
   pays per run: worker processes (spawned here, Ray's job workers there). Target: Ray >= 85 %. Ray's own
   start-up (``--ray-address local`` starts one per run) is measured once and printed beside it.
2. The clustering stage's embedding (full-size ViT-B-32, random weights) of 1024 px PNG squares with
   their 256 px small copies, as 03 writes them, against a bare ``model.encode_image`` loop over the same
   images decoded and preprocessed beforehand; the old path (the 1024 px PNGs themselves) for reference,
   and the largest feature difference between the two paths. Target: >= 95 %.

Variants alternate, ``--repeats`` times; the best time counts (the machine may be shared). Results also
go to bench/results/bench_ray.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # every Ray process on 127.0.0.1


def finalize_input(scratch: Path, records: int) -> tuple[Path, Path]:
    """The sample generator's 60 images, and ``records`` records over them (new ids, so no reuse)."""
    from storyboard.devkit.sample_data import generate

    data = scratch / "sample"
    generate(data, seed=0, count=60)
    rels = list(json.loads((data / "ground_truth.json").read_text(encoding="utf-8"))["images"])
    metadata = scratch / "metadata_translated.jsonl"
    metadata.write_text("".join(json.dumps({"id": f"b{i:05d}", "image": rels[i % len(rels)], "text": "bench"})
                                + "\n" for i in range(records)), encoding="utf-8")
    return metadata, data / "images"


def time_finalize(metadata: Path, images: Path, out: Path, engine) -> float:
    from storyboard.images.finalize import FinalizeSettings, finalize_dataset

    shutil.rmtree(out, ignore_errors=True)  # fresh every time: no resume
    start = time.perf_counter()
    finalize_dataset(metadata, images, out, FinalizeSettings(size=1024, bubbles=True), workers=os.cpu_count() or 1,
                     engine=engine)
    return time.perf_counter() - start


def ray_local_start() -> float:
    """Seconds to start (and stop) a Ray on this machine, as ``--ray-address local`` does once per run."""
    from storyboard.engine.run import Engine
    from storyboard.engine.work import EngineSettings

    start = time.perf_counter()
    with Engine(EngineSettings(ray_address="local")):
        pass
    return time.perf_counter() - start


def bench_finalize(scratch: Path, records: int, repeats: int) -> dict:
    from ray.cluster_utils import Cluster

    from storyboard.engine.work import EngineSettings

    metadata, images = finalize_input(scratch, records)
    startup = ray_local_start()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count() or 1,
                                                            "include_dashboard": False})
    try:
        on_ray = EngineSettings(ray_address=cluster.address)
        best = {"here": float("inf"), "ray": float("inf")}
        for repeat in range(repeats):
            for name, engine in (("here", None), ("ray", on_ray)):
                best[name] = min(best[name], time_finalize(metadata, images, scratch / f"out-{name}", engine))
                print(f"  03 repeat {repeat + 1}, {name}: {records / best[name]:.2f} img/s (best so far)", flush=True)
    finally:
        cluster.shutdown()
    return {"records": records, "in_process_img_s": records / best["here"], "ray_img_s": records / best["ray"],
            "ray_local_start_s": startup}


def bench_embedding(scratch: Path, count: int, batch_size: int, repeats: int) -> dict:
    import cv2
    import numpy as np
    import open_clip
    import torch
    from bench_embed import make_images

    from storyboard.clustering.clip import ClipModel, QuietOpenClip
    from storyboard.clustering.decode import default_workers, open_for_embedding
    from storyboard.clustering.embed import iter_embeddings
    from storyboard.images.finalize import encode_image, small_copy

    with QuietOpenClip():
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model = model.eval()
    clip = ClipModel(model, preprocess, None, "ViT-B-32", "bench", torch.device("cpu"),
                     {"embed_dim": int(model.text_projection.shape[1])})
    folder = scratch / "squares"
    folder.mkdir()
    paths = make_images(folder, count, 1024, "png")
    smalls = []
    for path in paths:  # what 03 writes beside each square
        square = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        smalls.append(path.with_name(path.stem + ".small.png"))
        smalls[-1].write_bytes(encode_image(small_copy(square, 256), "png", 0))
    tensors = torch.stack([preprocess(open_for_embedding(p, None)) for p in paths])
    batches = [tensors[i:i + batch_size] for i in range(0, len(tensors), batch_size)]

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1)
        return time.perf_counter() - start

    features = {}

    def ours(with_smalls: bool) -> float:
        start = time.perf_counter()
        got = {}
        for b in iter_embeddings(clip, paths, batch_size=batch_size, smalls=smalls if with_smalls else None):
            got.update(zip(b.indices, b.features))
        features[with_smalls] = np.stack([got[i] for i in range(len(paths))])
        return time.perf_counter() - start

    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: encoder and decoders
        return usage.ru_utime + usage.ru_stime

    with torch.inference_mode():
        model.encode_image(batches[0][:2])  # warm-up
    variants = {"bare": bare, "small": lambda: ours(True), "full": lambda: ours(False)}
    best = {name: float("inf") for name in variants}
    cpu = {name: float("inf") for name in variants}
    for repeat in range(repeats):
        for name, run in variants.items():
            before = cpu_seconds()
            best[name] = min(best[name], run())
            cpu[name] = min(cpu[name], cpu_seconds() - before)
            print(f"  embedding repeat {repeat + 1}, {name}: {count / best[name]:.1f} img/s (best so far)", flush=True)
    cpu_ms = {name: 1000 * seconds / count for name, seconds in cpu.items()}
    one_thread = one_thread_costs(model, preprocess, paths, smalls, batches[0])
    return {"one_thread_ms": one_thread, "images": count, "bare_img_s": count / best["bare"],
            "small_img_s": count / best["small"],
            "full_png_img_s": count / best["full"], "decode_workers": default_workers(clip.device),
            "cpu_ms_per_image": cpu_ms,
            "max_feature_diff_small_vs_full": float(np.abs(features[True] - features[False]).max())}


def one_thread_costs(model, preprocess, paths, smalls, batch) -> dict:
    """CPU ms per image on one thread (no OpenMP spinning, so steady on a busy machine): decoding +
    preprocessing a 1024 px PNG square, its 256 px small copy, and encoding one image."""
    import torch

    from storyboard.clustering.decode import ImageFiles

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs = {}
        for name, files in (("decode_full", ImageFiles(paths, preprocess, 224)),
                            ("decode_small", ImageFiles(paths, preprocess, 224, smalls))):
            start = time.process_time()
            for i in range(len(paths)):
                files[i]
            costs[name] = 1000 * (time.process_time() - start) / len(paths)
        start = time.process_time()
        with torch.inference_mode():
            model.encode_image(batch)
        costs["encode"] = 1000 * (time.process_time() - start) / len(batch)
        return costs
    finally:
        torch.set_num_threads(threads)


def table_rows(fin: dict | None, emb: dict | None) -> list[tuple]:
    rows = []
    if fin:
        rows.append((f"03 finalize, {fin['records']} records -> 1024 px, bubbles", "in process, one worker per core",
                     f"{fin['in_process_img_s']:.2f}", "--ray-address (Ray on 127.0.0.1, running)",
                     f"{fin['ray_img_s']:.2f}", f"{fin['ray_img_s'] / fin['in_process_img_s']:.0%}", ">= 85 %"))
    if emb:
        rows += [(f"embedding, ViT-B-32, {emb['images']} squares", "bare encode_image, pre-decoded",
                  f"{emb['bare_img_s']:.1f}", "ours, 256 px small copies", f"{emb['small_img_s']:.1f}",
                  f"{emb['small_img_s'] / emb['bare_img_s']:.0%}", ">= 95 %"),
                 ("  (reference: the old path)", "bare encode_image, pre-decoded", f"{emb['bare_img_s']:.1f}",
                  "ours, 1024 px PNG squares", f"{emb['full_png_img_s']:.1f}",
                  f"{emb['full_png_img_s'] / emb['bare_img_s']:.0%}", "")]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=120, help="03 records (1024 px squares with bubbles)")
    parser.add_argument("--images", type=int, default=64, help="images the embedding encodes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("finalize", "embedding"), default=None, help="run one of the two")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "bench_ray.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("STORYBOARD_NO_PROGRESS", "1")
    os.environ.update(LOOPBACK)  # before Ray is imported

    from storyboard.core.cli import format_table

    load_before = os.getloadavg()[0]
    fin = emb = None
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        if args.only != "embedding":
            fin = bench_finalize(Path(scratch), args.records, args.repeats)
        if args.only != "finalize":
            emb = bench_embedding(Path(scratch), args.images, args.batch_size, args.repeats)
    load = (load_before, os.getloadavg()[0])
    print(f"\n{platform.platform()}, {os.cpu_count()} CPUs, best of {args.repeats}, {time.strftime('%Y-%m-%d')}, "
          f"load average {load[0]:.1f} before / {load[1]:.1f} after (other jobs on the machine slow both sides)\n")
    print(format_table(table_rows(fin, emb), header=("what", "baseline", "img/s", "ours", "img/s", "of baseline",
                                                      "target")))
    if emb:
        cpu_ms = emb["cpu_ms_per_image"]
        print(f"\nembedding CPU ms per image (steadier than wall time on a shared machine): bare {cpu_ms['bare']:.0f}, "
              f"small copies {cpu_ms['small']:.0f}, 1024 px PNGs {cpu_ms['full']:.0f}; what the CPU cost leaves "
              f"attainable on a machine of its own: {cpu_ms['bare'] / cpu_ms['small']:.0%} with the small copies, "
              f"{cpu_ms['bare'] / cpu_ms['full']:.0%} without")
        one = emb["one_thread_ms"]
        print(f"on one thread, CPU ms per image: encode {one['encode']:.0f}, decode + preprocess a 1024 px PNG "
              f"{one['decode_full']:.1f}, its 256 px small copy {one['decode_small']:.1f}: where decoding and encoding "
              f"share the cores, end to end can reach encode / (encode + decode) = "
              f"{one['encode'] / (one['encode'] + one['decode_small']):.0%} of bare with the small copies, "
              f"{one['encode'] / (one['encode'] + one['decode_full']):.0%} without")
        print(f"features from the small copies vs from the 1024 px PNGs: max difference "
              f"{emb['max_feature_diff_small_vs_full']:.1e}")
    if fin:
        print(f"Ray start-up, paid once per run by --ray-address local (not in the rates above): "
              f"{fin['ray_local_start_s']:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(),
                                    "cpus": os.cpu_count(), "load_average": load, "finalize": fin,
                                    "embedding": emb}, indent=1) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
