"""Phases 6-7 of the full run: the balance plan over the rows that have a shot size (what it leaves out
goes to rejects as ``balanced_out``), then the output records, in input order, each followed by its
repeats: the input's fields plus the stage's, ``text`` led by the trigger token.
"""
from __future__ import annotations

from storyboard.clustering.cluster import BalancePlan, Clustering, ClusterName, balance, trigger_text
from storyboard.clustering.naming import Clusters, Naming
from storyboard.clustering.rows import Row, reject_row
from storyboard.clustering.settings import ClusteringSettings, parse_target
from storyboard.clustering.shots import ShotGuess
from storyboard.core.records import StageRecords, harmonize_field_types
from storyboard.core.vocabulary import Term, Vocabulary


def balance_shots(stage: StageRecords, rows: list[Row], final: list[str | None], labelled: list[int],
                   clustering: Clustering, order: list[str],
                   s: ClusteringSettings) -> tuple[BalancePlan, dict[int, list[int]]]:
    """The balance plan over the labelled rows, rejecting what it leaves out; also each row's repeat
    copy numbers (by row index)."""
    plan = balance([final[i] for i in labelled], [rows[i].tag is not None for i in labelled],
                   [float(clustering.distances[i]) for i in labelled], order, parse_target(s.balance_target),
                   s.repeat, s.max_repeat, s.seed)
    for j in plan.dropped:
        i = labelled[j]
        info = plan.per_shot[final[i]]
        reject_row(stage, rows[i], "balanced_out",
                f"{final[i]} has {info['before']} records, over the target of {plan.target}", shot_size=final[i])
    repeats_of: dict[int, list[int]] = {}
    for j, copy_number in plan.repeats:
        repeats_of.setdefault(labelled[j], []).append(copy_number)
    return plan, repeats_of


def _final_record(row: Row, term: Term, name: ClusterName, cluster: int, distance: float, cid: str,
                  guess: ShotGuess | None, vocab: Vocabulary) -> dict:
    """The output record: the input's fields plus the stage's (see the module doc)."""
    out = dict(row.record)
    out.update({
        "shot_size": term.key,
        "shot_size_tag": row.record.get("shot_size"),
        "shot_size_source": "tag" if row.tag else name.source,
        "shot_size_inferred": row.tag is None,
        "cluster": cluster,
        "cluster_distance": round(distance, 5),
        "cluster_label": name.label,
        "cluster_label_source": name.source,
        "cluster_purity": name.purity,
        "clustering_id": cid,
    })
    if guess is not None:
        out["shot_size_estimate"] = guess.shot_size
        out["shot_size_estimate_score"] = round(guess.score, 3)
    out["text_before_trigger"] = row.record.get("text")
    out["text"] = trigger_text(row.record.get("text"), term, vocab)
    out["trigger_token"] = term.token
    out["image_sha256"] = row.key
    out["balance_copy"] = 0
    return out


def write_records(stage: StageRecords, rows: list[Row], final: list[str | None], labelled: list[int],
                   plan: BalancePlan, repeats_of: dict[int, list[int]], clusters: Clusters, naming: Naming,
                   vocab: Vocabulary) -> None:
    """Write the kept records in input order, each followed by its repeats."""
    clustering = clusters.clustering
    kept = sorted(labelled[j] for j in plan.keep)
    outputs = []
    for i in kept:
        c = int(clustering.labels[i])
        guess = naming.guesses[i] if naming.guesses is not None else None
        out = _final_record(rows[i], vocab.get("shot_size", final[i]), naming.names[c], c,
                            float(clustering.distances[i]), clusters.id, guess, vocab)
        outputs.append((out, repeats_of.get(i, [])))
    # One type per field, so datasets' imagefolder loader reads the final set too.
    stage.extra["fields made text (mixed types)"] = ", ".join(
        harmonize_field_types([out for out, _ in outputs])) or "none"
    for out, repeats in outputs:
        stage.accept(out)
        for n in repeats:
            stage.accept({**out, "balance_copy": n}, repeat=True)
    stage.extra["shot sizes from tags"] = sum(1 for i in kept if rows[i].tag)
    stage.extra["shot sizes inferred"] = sum(1 for i in kept if not rows[i].tag)
    stage.extra["repeats added"] = len(plan.repeats)
