"""The narrow channel between a sample and its judge: plain data and handles, never code.

A function-style sample runs in one process and the tests that judge it in another (see
`sandbox.worker`), joined by a socket. The judge sends requests ("call this", "give me that
global"); the sample answers with values, which cross as `codec` encodes them: plain data
as exact built-in and standard-library types, anything else as a handle the judge can
call and inspect but that is equal only to itself.

Lists, dicts, sets, bytearrays and deques the judge passed are written back after a call,
so a function that sorts its argument in place is seen to have done so. The judge treats
anything malformed as the sample's error. Standard library only: the sandbox worker's
processes import this.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import importlib
import socket
import sys
import textwrap
import types
from collections.abc import Callable, Sequence
from typing import Any

from weighted_mtp.eval.sandbox.codec import (
    ChannelClosed,
    Json,
    ProtocolError,
    as_list,
    as_str,
    by_name,
    decode,
    dumps,
    encode,
    receive_frame,
    send_frame,
    send_text,
    standard_name,
    stdlib_module_name,
)

TEXT_LIMIT = 1000  # characters of an exception message or repr that cross
REASON_LIMIT = 300  # characters of a verdict's reason
CALLS_FRAME_BYTES = 1 << 20  # results of a batch of calls per frame (the rest follow)
FIRST_BATCH, LAST_BATCH = 8, 1024  # calls per request when the tests call ahead
CALL_AHEAD = "__call_ahead__"  # the judge's helper in the tests' namespace
COMPILED_CHARS = 32 << 20  # characters of tests kept compiled (about 6 bytes of code each)

MUTABLE = (list, dict, set, bytearray, collections.deque)


class SampleError(Exception):
    """An exception the sample raised whose type is not a built-in exception."""


class SampleGone(Exception):
    """The sample's process ended, or broke the protocol, before the tests finished."""


class SampleBrokeProtocol(SampleGone):
    """The sample sent something that is not a valid message or value: its verdict is
    final, whether or not its process ends."""


def bounded(text: str, limit: int = TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    """`Type: message` on one line, at most REASON_LIMIT characters."""
    if isinstance(exc, (SampleError, SampleGone)):
        text = str(exc)
    else:
        try:
            message = str(exc)
        except BaseException:  # a rigged __str__
            message = ""
        text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return bounded(" ".join(text.split()), REASON_LIMIT)


# --- the sample's side --------------------------------------------------------------------


class Handles:
    """The sample's objects the judge holds handles to, by number."""

    def __init__(self) -> None:
        self.objects: list[object] = []
        self.numbers: dict[int, int] = {}

    def export(self, value: object) -> Json:
        """A class of the standard library crosses as its name (the judge compares it
        with its own); anything else, functions included, as a handle: calls run here."""
        named = standard_name(value)
        if named is not None and isinstance(value, type):
            return ["named", *named]
        number = self.numbers.get(id(value))
        if number is None:
            number = self.numbers[id(value)] = len(self.objects)
            self.objects.append(value)  # kept alive, so id(value) stays unique
        module = stdlib_module_name(value)
        if module is not None:
            return ["module", module, number]
        return ["ref", number]

    def resolve(self, tag: str, payload: list[Json]) -> object:
        if tag == "named":
            return by_name(payload)
        number = payload[0] if payload else None
        if tag != "ref" or not isinstance(number, int) or not 0 <= number < len(self.objects):
            raise ProtocolError(f"no such object {payload!r}")
        return self.objects[number]

    def encode(self, value: object) -> Json:
        return encode(value, self.export)

    def decode(self, data: Json) -> Any:
        return decode(data, self.resolve)


def raised(exc: BaseException) -> Json:
    try:
        message = str(exc)
    except BaseException:  # a rigged __str__
        message = "<unprintable>"
    return ["raise", bounded(type(exc).__name__, 100), bounded(message)]


def _call(handles: Handles, target: object, args: Json, kwargs: Json) -> Json:
    positional = [handles.decode(a) for a in as_list(args)]
    named = {as_str(k): handles.decode(v) for k, v in as_list(kwargs)}
    before = {i: a for i, a in enumerate(as_list(args)) if isinstance(positional[i], MUTABLE)}
    before.update({k: v for k, v in as_list(kwargs) if isinstance(named[k], MUTABLE)})
    result = target(*positional, **named)  # type: ignore[operator]
    changed = []
    for key, original in before.items():
        value = positional[key] if isinstance(key, int) else named[key]
        now = handles.encode(value)
        if now != original:
            changed.append([key, now])
    return ["ok", handles.encode(result), changed]


def send_calls(sock: socket.socket, handles: Handles, target: object, calls: Json) -> None:
    """Answer a batch of calls of `target`, in order, in frames `["calls", results, raised,
    done]` of about CALLS_FRAME_BYTES each: each result is `[value, changed arguments]`
    as one call's reply holds them; the first call that raises ends the batch and its
    exception is `raised` (else null). The tests decide; the sample never sees them."""
    items: list[str] = []
    size = 0
    failure: Json = None
    for call in as_list(calls):
        args, kwargs = as_list(call)
        try:
            _ok, value, changed = _call(handles, target, args, kwargs)
            item = dumps([value, changed])
        except BaseException as exc:  # the sample's own exception, or its value's
            failure = raised(exc)
            break
        if items and size + len(item) > CALLS_FRAME_BYTES:
            send_text(sock, '["calls",[' + ",".join(items) + "],null,false]")
            items, size = [], 0
        items.append(item)
        size += len(item)
    send_text(sock, '["calls",[' + ",".join(items) + "]," + dumps(failure) + ",true]")


def answer(request: Json, namespace: dict[str, Any], handles: Handles) -> Json:
    """The reply to one request of the judge (run in the sample's process)."""
    op, *rest = as_list(request)
    if op == "global":
        (name,) = rest
        if as_str(name) not in namespace:
            raise NameError(f"name {name!r} is not defined")
        return ["ok", handles.encode(namespace[name]), []]
    target = handles.resolve("ref", [rest[0]])
    if op == "call":
        return _call(handles, target, rest[1], rest[2])
    result: object
    if op == "getattr":
        result = getattr(target, as_str(rest[1]))
    elif op == "setattr":
        setattr(target, as_str(rest[1]), handles.decode(rest[2]))
        result = None
    elif op == "getitem":
        result = target[handles.decode(rest[1])]  # type: ignore[index]
    elif op == "setitem":
        target[handles.decode(rest[1])] = handles.decode(rest[2])  # type: ignore[index]
        result = None
    elif op == "iter":
        result = iter(target)  # type: ignore[call-overload]
    elif op == "next":
        result = next(target)  # type: ignore[call-overload]
    elif op == "len":
        result = len(target)  # type: ignore[arg-type]
    elif op == "bool":
        result = bool(target)
    elif op == "contains":
        result = handles.decode(rest[1]) in target  # type: ignore[operator]
    elif op == "repr":
        result = bounded(repr(target))
    else:
        raise ProtocolError(f"unknown request {op!r}")
    return ["ok", handles.encode(result), []]


def run_sample(sock: socket.socket, program: str) -> int:
    """The sample's side: run the program to its end and say so, with handles to the
    functions, classes and modules it defined (or say what it raised); then answer the
    judge until it closes the channel. The exit status for the sample's process."""
    namespace: dict[str, Any] = {"__name__": "__sample__", "__builtins__": builtins}
    try:
        exec(compile(program, "<sample>", "exec"), namespace)
    except BaseException as exc:  # the program's own failure, SystemExit included
        with contextlib.suppress(Exception):
            send_frame(sock, raised(exc))
        return 1
    handles = Handles()
    defined = [
        [name, handles.encode(value)]
        for name, value in list(namespace.items())
        if not name.startswith("__") and (callable(value) or isinstance(value, types.ModuleType))
    ]
    send_frame(sock, ["loaded", defined])
    serve(sock, namespace, handles)
    return 0


def serve(sock: socket.socket, namespace: dict[str, Any], handles: Handles) -> None:
    """Answer the judge's requests until it closes the channel."""
    while True:
        try:
            request = receive_frame(sock)
        except (ChannelClosed, ProtocolError):
            return
        try:
            if isinstance(request, list) and len(request) == 3 and request[0] == "calls":
                send_calls(sock, handles, handles.resolve("ref", [request[1]]), request[2])
            else:
                send_frame(sock, answer(request, namespace, handles))
            continue
        except (ChannelClosed, OSError):
            return
        except BaseException as exc:  # the sample's own exception, or its value is too big
            reply = raised(exc)
        try:
            send_frame(sock, reply)
        except (ProtocolError, OSError):
            return


# --- the judge's side ---------------------------------------------------------------------


def exception_name(name: str) -> str:
    """The name of an exception the sample raised, as its reason may show it: an
    identifier (a class named `sandbox failure` would pass for the sandbox's reason)."""
    return bounded(name, 100) if name.isidentifier() else "Exception"


def _exception(name: str, message: str) -> Exception:
    """The judge's own exception for one the sample raised: a built-in exception type by
    name (so `except ValueError` in a test works), else SampleError."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:  # exception types that need other arguments
            pass
    return SampleError(f"{name}: {message}" if message else name)


class Channel:
    """The judge's end: requests to the sample, replies decoded into plain values and
    `SampleObject` handles."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def resolve(self, tag: str, payload: list[Json]) -> object:
        if tag == "named":  # classes only: the sample must not hand the tests `eval`
            found = by_name(payload)
            if not isinstance(found, type):
                raise ProtocolError("the sample sent a function by name")
            return found
        if tag == "module" and len(payload) == 2 and isinstance(payload[0], str):
            name = payload[0]
            if name.partition(".")[0] in sys.stdlib_module_names:
                return importlib.import_module(name)
            payload = payload[1:]
        (number,) = payload
        if not isinstance(number, int) or isinstance(number, bool):
            raise ProtocolError("a handle that is not a number")
        return SampleObject(self, number)

    def encode(self, value: object) -> Json:
        return encode(value, judge_export)

    def receive(self) -> Json:
        try:
            return receive_frame(self.sock)
        except ChannelClosed:
            raise SampleGone("the sample ended before the tests finished") from None
        except ProtocolError as exc:
            raise SampleBrokeProtocol(f"the sample broke the protocol: {exc}") from None

    def request(self, op: str, *args: Json, writeback: dict[Any, Any] | None = None) -> Any:
        try:
            send_frame(self.sock, [op, *args])
        except OSError:
            raise SampleGone("the sample ended before the tests finished") from None
        reply = self.receive()
        try:
            kind, *rest = as_list(reply)
            if kind == "raise":
                error = _raised(op, rest)
            elif kind == "ok" and len(rest) == 2:
                value = decode(rest[0], self.resolve)
                _write_back(writeback or {}, as_list(rest[1]), self.resolve)
                return value
            else:
                raise ProtocolError("not a reply")
        except (ProtocolError, TypeError, ValueError) as exc:
            raise SampleBrokeProtocol(f"the sample broke the protocol: {exc}") from None
        raise error

    def calls(
        self, number: int, arguments: Sequence[Sequence[Any]]
    ) -> tuple[list[Any], Exception | None]:
        """Call the sample's object `number` on each argument list in order, in one
        request: the values returned up to the first call that raised, and what that call
        raised (None: none did). Arguments it changed in place are written back, as
        `call` does."""
        try:
            send_frame(
                self.sock,
                ["calls", number, [[[self.encode(a) for a in args], []] for args in arguments]],
            )
        except OSError:
            raise SampleGone("the sample ended before the tests finished") from None
        values: list[Any] = []
        while True:
            reply = self.receive()
            try:
                kind, *rest = as_list(reply)
                if kind == "raise":
                    return values, _raised("call", rest)
                if kind != "calls" or len(rest) != 3 or not isinstance(rest[2], bool):
                    raise ProtocolError("not a reply to calls")
                items, failure, done = rest
                for item in as_list(items):
                    data, changed = as_list(item)
                    args = arguments[len(values)]
                    values.append(decode(data, self.resolve))
                    mutable = {i: a for i, a in enumerate(args) if isinstance(a, MUTABLE)}
                    _write_back(mutable, as_list(changed), self.resolve)
                if failure is not None:
                    _raise, *what = as_list(failure)
                    return values, _raised("call", what)
                if done:
                    if len(values) != len(arguments):
                        raise ProtocolError("fewer results than calls")
                    return values, None
            except (ProtocolError, TypeError, ValueError, IndexError) as exc:
                raise SampleBrokeProtocol(f"the sample broke the protocol: {exc}") from None

    def wait_loaded(self) -> dict[str, Any]:
        """Once the sample's program ran to its end, the functions, classes and modules it
        defined, by name; else raise what it raised."""
        message = self.receive()
        if isinstance(message, list) and len(message) == 2 and message[0] == "loaded":
            try:
                return {as_str(k): decode(v, self.resolve) for k, v in as_list(message[1])}
            except (ProtocolError, TypeError, ValueError) as exc:
                raise SampleBrokeProtocol(f"the sample broke the protocol: {exc}") from None
        if isinstance(message, list) and len(message) == 3 and message[0] == "raise":
            name, text = exception_name(str(message[1])), bounded(str(message[2]))
            if name == "SystemExit":
                raise SampleGone(f"the sample exited before the tests finished ({text})")
            raise _exception(name, text)
        raise SampleBrokeProtocol("the sample broke the protocol: no 'loaded' message")

    def call(self, number: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        mutable: dict[Any, Any] = {i: a for i, a in enumerate(args) if isinstance(a, MUTABLE)}
        mutable.update({k: v for k, v in kwargs.items() if isinstance(v, MUTABLE)})
        return self.request(
            "call",
            number,
            [self.encode(a) for a in args],
            [[k, self.encode(v)] for k, v in kwargs.items()],
            writeback=mutable,
        )


def _raised(op: str, rest: list[Json]) -> Exception:
    """The judge's exception for the sample's `["raise", name, message]` reply to `op`."""
    if len(rest) != 2 or not all(isinstance(x, str) for x in rest):
        raise ProtocolError("not a reply")
    name = exception_name(rest[0])
    if name == "StopIteration" and op != "next":  # it would end the tests' loops
        name = "StopIteration raised by a call"
    return _exception(name, bounded(rest[1]))


def _write_back(
    targets: dict[Any, Any], changed: list[Json], resolve: Callable[[str, list[Json]], object]
) -> None:
    """Make the judge's arguments what the sample's call left them."""
    for entry in changed:
        key, data = as_list(entry)
        if key not in targets:
            raise ProtocolError("write-back to an argument that cannot change")
        target, value = targets[key], decode(data, resolve)
        if type(value) is not type(target):
            raise ProtocolError("write-back of another type")
        if isinstance(target, (list, bytearray)):
            target[:] = value
        else:
            target.clear()
            (target.update if isinstance(target, (dict, set)) else target.extend)(value)


def judge_export(value: object) -> Json:
    """The tests may pass the sample its own objects, and standard classes and functions
    (`int`, `math.sqrt`) by name; nothing else of theirs."""
    if isinstance(value, SampleObject):
        return ["ref", object.__getattribute__(value, "_number")]
    named = standard_name(value)
    if named is not None:
        return ["named", *named]
    raise TypeError(f"a {type(value).__name__} cannot be passed to the sample (plain data only)")


class SampleObject:
    """An object that stays in the sample's process. Equal only to itself."""

    __slots__ = ("_channel", "_number")

    def __init__(self, channel: Channel, number: int) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_number", number)

    def _ask(self, op: str, *args: Json) -> Any:
        channel: Channel = object.__getattribute__(self, "_channel")
        return channel.request(op, object.__getattribute__(self, "_number"), *args)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        channel: Channel = object.__getattribute__(self, "_channel")
        return channel.call(object.__getattribute__(self, "_number"), args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._ask("getattr", name)

    def __setattr__(self, name: str, value: object) -> None:
        channel: Channel = object.__getattribute__(self, "_channel")
        self._ask("setattr", name, channel.encode(value))

    def __getitem__(self, key: object) -> Any:
        channel: Channel = object.__getattribute__(self, "_channel")
        return self._ask("getitem", channel.encode(key))

    def __setitem__(self, key: object, value: object) -> None:
        channel: Channel = object.__getattribute__(self, "_channel")
        self._ask("setitem", channel.encode(key), channel.encode(value))

    def __iter__(self) -> Any:
        return self._ask("iter")

    def __next__(self) -> Any:
        return self._ask("next")

    def __len__(self) -> int:
        length = self._ask("len")
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise TypeError("the sample's __len__ did not give a non-negative int")
        return length

    def __bool__(self) -> bool:
        truth = self._ask("bool")
        if not isinstance(truth, bool):
            raise TypeError("the sample's __bool__ did not give a bool")
        return truth

    def __contains__(self, item: object) -> bool:
        channel: Channel = object.__getattribute__(self, "_channel")
        found = self._ask("contains", channel.encode(item))
        if not isinstance(found, bool):
            raise TypeError("the sample's __contains__ did not give a bool")
        return found

    def __repr__(self) -> str:
        try:
            text = self._ask("repr")
        except Exception:
            text = None
        return text if isinstance(text, str) else "<an object of the sample>"


class _Ahead:
    """The calls of one sample function on one list of inputs, fetched a batch ahead."""

    def __init__(self, function: SampleObject, inputs: Sequence[Any]) -> None:
        self.function, self.inputs = function, inputs
        self.results: list[tuple[Any, Exception | None]] = []  # (value, what it raised)
        self.served = 0  # the next index the tests ask for, in order

    def result(self, index: int) -> Any:
        if index != self.served:  # not in order: as the plain call would
            return self.function(*self.inputs[index])
        if index == len(self.results):
            self.fetch(index)
        self.served += 1
        value, error = self.results[index]
        if error is not None:
            raise error
        return value

    def fetch(self, start: int) -> None:
        size = min(max(len(self.results), FIRST_BATCH), LAST_BATCH)
        arguments = [tuple(args) for args in self.inputs[start : start + size]]
        channel: Channel = object.__getattribute__(self.function, "_channel")
        number: int = object.__getattribute__(self.function, "_number")
        values, error = channel.calls(number, arguments)
        self.results += [(value, None) for value in values]
        if error is not None:
            self.results.append((None, error))


class CallAhead:
    """`__call_ahead__(function, inputs, i)`: what `function(*inputs[i])` gives, for tests
    that call the sample's function on each input of a list in order (EvalPlus's tests
    call it thousands of times). The sample's function is called on the next inputs in one
    request (8, then as many as were called so far, up to 1024), its values kept in the
    judge until the tests ask for them; a call that raised raises when its turn comes.
    The sample sees nothing it would not see call by call (the inputs, in the same
    order), and the tests still decide each value; only the calls after a failing one
    (at most one batch) run before the tests fail. Anything else (a function of the
    tests', an index out of order) is called as written."""

    def __init__(self) -> None:
        self.runs: dict[tuple[int, int], _Ahead] = {}

    def __call__(self, function: Any, inputs: Sequence[Any], index: int) -> Any:
        if type(function) is not SampleObject or not isinstance(inputs, (list, tuple)):
            return function(*inputs[index])
        run = self.runs.get((id(function), id(inputs)))
        if run is None or run.function is not function or run.inputs is not inputs:
            run = self.runs[(id(function), id(inputs))] = _Ahead(function, inputs)
        return run.result(index)


def _loop_names(node: ast.For) -> tuple[str, str, str] | None:
    """(index, item, inputs) of a loop over `enumerate(inputs)` or `enumerate(zip(inputs,
    ...))` whose target is `i, inp` or `i, (inp, ...)`; None for any other loop."""
    target, iterated = node.target, node.iter
    if not (
        isinstance(target, ast.Tuple)
        and len(target.elts) == 2
        and isinstance(iterated, ast.Call)
        and isinstance(iterated.func, ast.Name)
        and iterated.func.id == "enumerate"
        and len(iterated.args) == 1
        and not iterated.keywords
    ):
        return None
    index, item = target.elts
    source = iterated.args[0]
    if isinstance(item, ast.Tuple) and item.elts:
        item = item.elts[0]
        if not (
            isinstance(source, ast.Call)
            and isinstance(source.func, ast.Name)
            and source.func.id == "zip"
            and source.args
            and not source.keywords
        ):
            return None
        source = source.args[0]
    if not all(isinstance(n, ast.Name) for n in (index, item, source)):
        return None
    return index.id, item.id, source.id  # type: ignore[attr-defined]


class _Calls(ast.NodeTransformer):
    def __init__(self, index: str, item: str, inputs: str) -> None:
        self.index, self.item, self.inputs = index, item, inputs
        self.changed = False

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        match node:
            case ast.Call(
                func=ast.Name() as function,
                args=[ast.Starred(value=ast.Name(id=item))],
                keywords=[],
            ) if item == self.item:
                load = ast.Load()
                helper = ast.Name(CALL_AHEAD, load)
                arguments: list[ast.expr] = [
                    function,
                    ast.Name(self.inputs, load),
                    ast.Name(self.index, load),
                ]
                self.changed = True
                return ast.copy_location(ast.Call(helper, arguments, []), node)
        return node


def calling_ahead(test: str) -> str:
    """The tests with their loops of calls over a list of inputs calling ahead
    (`CallAhead`). Such a loop is found without parsing the whole tests (EvalPlus's hold
    megabytes of literal inputs, which `compile` reads far faster than `ast` builds them):
    each line that starts a `for ... enumerate(` loop and the lines indented under it are
    parsed alone, and rewritten only where they form such a loop."""
    lines = test.splitlines(keepends=True)
    out: list[str] = []
    at = 0
    while at < len(lines):
        line = lines[at]
        stripped = line.lstrip()
        end = at + 1
        if stripped.startswith("for ") and "enumerate(" in line:
            indent = line[: len(line) - len(stripped)]
            while end < len(lines) and (
                not lines[end].strip()
                or (lines[end].startswith(indent) and lines[end][len(indent)] in " \t")
            ):
                end += 1
            rewritten = _rewritten_loop("".join(lines[at:end]), indent)
            if rewritten is not None:
                out.append(rewritten)
                at = end
                continue
            end = at + 1
        out.append(line)
        at = end
    return "".join(out)


def _rewritten_loop(block: str, indent: str) -> str | None:
    """The loop `block` (indented by `indent`) calling ahead, or None if it is not one."""
    try:
        tree = ast.parse(textwrap.dedent(block))
    except SyntaxError:
        return None
    loop = tree.body[0]
    if len(tree.body) != 1 or not isinstance(loop, ast.For):
        return None
    names = _loop_names(loop)
    if names is None:
        return None
    calls = _Calls(*names)
    loop.body = [calls.visit(statement) for statement in loop.body]
    if not calls.changed:
        return None
    text = ast.unparse(ast.fix_missing_locations(tree))
    return "".join(indent + line + "\n" for line in text.splitlines())


class CompiledTests:
    """The code of the tests a judge ran last, by their text, up to COMPILED_CHARS
    characters of tests: the samples of one task share its tests, and compiling
    EvalPlus's (megabytes of literal inputs and outputs) costs far more than running them."""

    def __init__(self, limit: int = COMPILED_CHARS) -> None:
        self.limit = limit
        self.codes: collections.OrderedDict[str, types.CodeType] = collections.OrderedDict()

    def code(self, test: str) -> types.CodeType:
        found = self.codes.get(test)
        if found is not None:
            self.codes.move_to_end(test)
            return found
        code = compile(calling_ahead(test), "<tests>", "exec")
        if len(test) <= self.limit:
            self.codes[test] = code
            while sum(len(text) for text in self.codes) > self.limit:
                self.codes.popitem(last=False)
        return code


COMPILED = CompiledTests()


def is_module_name(name: str) -> bool:
    """A top-level module of the standard library (`math`, `sys`, `collections`)."""
    return name in sys.stdlib_module_names


class JudgeNamespace(dict[str, Any]):
    """The tests' globals: their own names first, then the built-ins and the standard
    library's modules (the judge's own: `math.isclose` in a test that does not import
    `math` is the real one, whatever the sample bound to `math`), then the sample's module
    globals, as if tests and program shared a module. Names the benchmark's program defines
    that are also built-ins or module names are bound to the sample's objects beforehand
    (`take_from_sample`). The sample's functions, classes and modules come with its
    'loaded' message; other values are asked for at each use (they may change)."""

    def __init__(self, channel: Channel) -> None:
        super().__init__(__name__="__judge__", __builtins__=builtins)
        self[CALL_AHEAD] = CallAhead()
        self.channel = channel
        self.defined: dict[str, Any] = {}

    def __missing__(self, name: str) -> Any:
        if name.startswith("__") or hasattr(builtins, name):
            raise KeyError(name)
        if is_module_name(name):
            module = self[name] = importlib.import_module(name)
            return module
        return self.sample_global(name)

    def sample_global(self, name: str) -> Any:
        if name in self.defined:
            return self.defined[name]
        try:
            return self.channel.request("global", name)
        except NameError:
            raise KeyError(name) from None

    def take_from_sample(self, name: str) -> None:
        """Bind `name` to the sample's object even where the tests or built-ins have one
        (the function under test, e.g. MBPP's `sum`)."""
        with contextlib.suppress(KeyError):
            self[name] = self.sample_global(name)


def judge(sock: socket.socket, prelude: str, test: str, entry_points: list[str]) -> dict[str, Any]:
    """The judge's side: the prelude, then the tests against the sample; the verdict
    (`sample_gone` when the sample closed its channel, so the worker can say how it ended;
    a sample that broke the protocol is that sample's error, however it ends)."""
    channel = Channel(sock)
    namespace = JudgeNamespace(channel)
    try:
        exec(compile(prelude, "<prompt>", "exec"), namespace)
        namespace.defined = channel.wait_loaded()
        for name in entry_points:
            namespace.take_from_sample(name)
        exec(COMPILED.code(test), namespace)
    except AssertionError as exc:
        return {"result": "failed", "reason": describe(exc)}
    except SampleBrokeProtocol as exc:
        return {"result": "error", "reason": describe(exc)}
    except SampleGone as exc:
        return {"result": "error", "reason": describe(exc), "sample_gone": True}
    except BaseException as exc:  # the tests' error on the sample's values, or the sample's
        return {"result": "error", "reason": describe(exc)}
    return {"result": "passed", "reason": ""}
