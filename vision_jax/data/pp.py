"""Preprocessing strings, big_vision style: "decode|random_resized_crop(224)|flip_lr|value_range(-1, 1)".

`parse(spec)` turns a string of ops (vision_jax.data.ops.OPS) joined by '|' into one function
`fn(data: dict, seed: int64[2]) -> dict`; `parse_batch(spec)` does the same with the batch ops
(mixup, cutmix) for a batch dict. Arguments are Python literals, positional or keyword (simple
arithmetic such as 3/4 is allowed); an op without arguments may drop its parentheses. The string
is read with `ast`, never evaluated. An empty string is the identity.

Op number i (from 0) gets the seed `fold_in(seed, i)`, so its randomness depends only on its
position: appending an op never changes what the ops before it do.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import operator
from collections.abc import Callable
from typing import Any

import tensorflow as tf

from vision_jax.data.batch_ops import BATCH_OPS
from vision_jax.data.ops import OPS
from vision_jax.errors import ConfigError
from vision_jax.registry import Registry, closest


@dataclasses.dataclass(frozen=True)
class OpCall:
    """One parsed element of a pp string: the op's name and the arguments written for it."""
    name: str
    args: tuple
    kwargs: dict
    column: int  # where it starts in the (stripped) spec, for error messages


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """A parsed pp string: call it as fn(data, seed)."""
    spec: str
    calls: tuple[OpCall, ...]
    ops: tuple[Callable, ...]

    @tf.autograph.experimental.do_not_convert  # plain graph code: autograph would only add tracing time
    def __call__(self, data: dict, seed) -> dict:
        seed = tf.cast(seed, tf.int64)
        data = dict(data)
        for position, op in enumerate(self.ops):
            data = op(data, tf.random.experimental.stateless_fold_in(seed, tf.constant(position, tf.int64)))
        return data


def parse(spec: str) -> Preprocess:
    """Per-example preprocessing from a pp string of OPS."""
    return _build(spec, OPS, other=BATCH_OPS, other_hint="pp.parse_batch, after batching")


def parse_batch(spec: str) -> Preprocess:
    """Batch-level preprocessing (mixup, cutmix) from a pp string of BATCH_OPS."""
    return _build(spec, BATCH_OPS, other=OPS, other_hint="pp.parse, per example before batching")


def parse_calls(spec: str) -> list[OpCall]:
    """The op calls of a pp string, without building them; malformed strings are ConfigErrors."""
    if not isinstance(spec, str):
        raise ConfigError(f"A pp string must be a str, got {type(spec).__name__} {spec!r}.")
    text = spec.strip()
    if not text:
        return []
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as error:
        column = (error.offset or 1) - 1
        raise ConfigError(f"Malformed pp string at column {column}: {error.msg}.\n  {text}\n  {' ' * column}^\n"
                          f"Expected ops joined by '|', e.g. 'decode|resize(32)|value_range(-1, 1)'.") from None
    return [_op_call(node, text) for node in _pipe_elements(tree)]


def _pipe_elements(node: ast.AST) -> list[ast.AST]:
    """'a|b|c' parses as ((a | b) | c); flatten it back to [a, b, c]."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _pipe_elements(node.left) + _pipe_elements(node.right)
    return [node]


def _malformed(node: ast.AST, text: str, what: str) -> ConfigError:
    column = node.col_offset
    return ConfigError(f"Malformed pp string at column {column}: {what}.\n  {text}\n  {' ' * column}^")


def _op_call(node: ast.AST, text: str) -> OpCall:
    if isinstance(node, ast.Name):
        return OpCall(node.id, (), {}, node.col_offset)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise _malformed(node, text, f"{ast.unparse(node)!r} is not an op name or op call like name(arg, key=value)")
    name = node.func.id
    args = []
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise _malformed(arg, text, f"op {name!r}: *args are not supported; write the values out")
        args.append(_literal(arg, text, name))
    kwargs = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise _malformed(keyword.value, text, f"op {name!r}: **kwargs are not supported; write key=value")
        kwargs[keyword.arg] = _literal(keyword.value, text, name)
    return OpCall(name, tuple(args), kwargs, node.col_offset)


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _literal(node: ast.AST, text: str, op_name: str) -> Any:
    """A Python literal (numbers, strings, None, booleans, tuples, lists), with + - * / on numbers."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        values = [_literal(element, text, op_name) for element in node.elts]
        return tuple(values) if isinstance(node, ast.Tuple) else values
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand, text, op_name)
        if isinstance(value, (int, float)):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left, text, op_name), _literal(node.right, text, op_name)
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            try:
                return _ARITHMETIC[type(node.op)](left, right)
            except ZeroDivisionError:
                raise _malformed(node, text, f"op {op_name!r}: division by zero in {ast.unparse(node)!r}") from None
    raise _malformed(node, text, f"argument {ast.unparse(node)!r} of op {op_name!r} is not a literal (use numbers, "
                                 f"strings, True/False/None, tuples or lists)")


def _build(spec: str, registry: Registry, other: Registry, other_hint: str) -> Preprocess:
    calls = parse_calls(spec)
    ops = []
    for index, call in enumerate(calls):
        where = f"element {index} of pp string {spec.strip()!r}"
        if call.name not in registry.names():
            if call.name in other.names():
                raise ConfigError(f"{other.kind} {call.name!r} ({where}) does not belong here: use it in "
                                  f"{other_hint}.")
            raise ConfigError(f"Unknown {registry.kind} {call.name!r} ({where}).{closest(call.name, registry.names())} "
                              f"Known {registry.kind}s: {', '.join(registry.names())}.")
        factory = registry.get(call.name)
        signature = inspect.signature(factory)
        try:
            signature.bind(*call.args, **call.kwargs)
        except TypeError as error:
            raise ConfigError(f"{registry.kind} {call.name!r} ({where}): {error}. "
                              f"Its signature is {call.name}{signature}.") from None
        ops.append(factory(*call.args, **call.kwargs))
    return Preprocess(spec, tuple(calls), tuple(ops))
