"""Runs evaluators over representations and prints the results table."""
from __future__ import annotations

from vision_jax.evaluators.features import EvalData, Representation


def evaluate_all(evaluators: dict, representations: list[Representation], data: EvalData,
                 with_references: bool = False) -> dict[str, dict[str, float]]:
    """{representation name: {'<evaluator>/<metric>': value}}; an evaluator scores the representations
    that have the output it reads (`evaluator.output`), and the others' cells stay empty. With
    `with_references`, evaluators that measure rows of their own without a representation (FID's
    real-data floor: `evaluator.reference_rows(data)`) add them."""
    results = {}
    for representation in representations:
        row = {}
        for name, evaluator in evaluators.items():
            if evaluator.output not in representation.outputs:
                continue
            for metric, value in evaluator(representation, data).items():
                row[f"{name}/{metric}"] = value
        results[representation.name] = row
    for name, evaluator in evaluators.items():
        if with_references and hasattr(evaluator, "reference_rows"):
            for row_name, metrics in evaluator.reference_rows(data).items():
                results.setdefault(row_name, {}).update({f"{name}/{k}": v for k, v in metrics.items()})
    return results


def format_table(results: dict[str, dict[str, float]], caption: str) -> str:
    columns = sorted({c for row in results.values() for c in row})
    lines = [caption, "", "| features | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
