"""What the published HumanEval+/MBPP+ files mean beyond their JSON: typed inputs and special oracles.

JSON has no tuples, sets or complex numbers, so ``MbppPlus.jsonl`` stores them as lists and strings;
the dataset's authors restore the Python types of about 60 tasks when they read the file, and their
reference outputs are computed on the restored inputs. ``mbpp_plus_inputs(task_id, inputs)`` does the
same restoration (the task numbers and the shape of each conversion are facts of the published
v0.2.0 file); every other task's inputs are returned unchanged.

A few tasks have outputs that plain equality cannot judge; ``oracle(dataset, entry_point)`` names the
check that ``problems.plus_program`` applies instead of equality:

  ``equal``         the default: equality, float leaves within atol (see ``problems``)
  ``find_zero``     HumanEval/32: the candidate's x must satisfy |poly(xs, x)| <= atol
  ``set_equal``     MBPP tasks whose answer is a collection in any order: set(out) == set(expected)
  ``not_none``      MBPP tasks whose reference returns a regex match object: expected holds only
                    "was not None"; a bool output must equal it, any other output must be not-None
                    exactly when expected is True
  ``any_output``    Mbpp/164 (are_equivalent): the task statement is ambiguous; any output that is
                    returned without an error passes
  ``zero_or_equal`` Mbpp/295 (sum_div): 0 is accepted beside the reference answer
  ``pyramid_area``  Mbpp/581 (surface_Area): the reference answer, or the rounded total surface of a
                    square pyramid of base edge b and perpendicular height h
  ``digit_distance`` Mbpp/558 (digit_distance_nums): the reference answer, or the digit-wise distance
                    after left-padding the shorter number with zeros
"""

from __future__ import annotations

from typing import Any, Callable

ORACLES = ("equal", "find_zero", "set_equal", "not_none", "any_output", "zero_or_equal", "pyramid_area",
           "digit_distance")

_MBPP_SET_EQUAL = ("similar_elements", "find_char_long", "common_in_nested_lists", "extract_singly",
                   "larg_nnum", "intersection_array", "find_dissimilar", "Diff")
_MBPP_NOT_NONE = ("check_str", "text_match_three", "text_starta_endb")
_MBPP_SPECIAL = {"are_equivalent": "any_output", "sum_div": "zero_or_equal", "surface_Area": "pyramid_area",
                 "digit_distance_nums": "digit_distance"}


def oracle(dataset: str, entry_point: str) -> str:
    """The check of one task (see the module docstring); ``dataset`` is "humaneval" or "mbpp"."""
    if dataset == "humaneval":
        return "find_zero" if entry_point == "find_zero" else "equal"
    if dataset != "mbpp":
        raise ValueError(f"dataset={dataset!r} must be 'humaneval' or 'mbpp'.")
    if entry_point in _MBPP_SET_EQUAL:
        return "set_equal"
    if entry_point in _MBPP_NOT_NONE:
        return "not_none"
    return _MBPP_SPECIAL.get(entry_point, "equal")


# ------------------------------------------------------------------------------- MBPP+ input types
# Each conversion maps the argument list of ONE call (as JSON decoded it) to the typed argument list.
def _tuple_deep(x: Any) -> Any:
    return tuple(_tuple_deep(v) for v in x) if isinstance(x, list) else x


def _every_arg_tuple(args: list) -> list:
    return [tuple(a) for a in args]


def _every_arg_list_of_tuples(args: list) -> list:
    return [[tuple(x) for x in a] for a in args]


def _every_arg_tuple_of_tuples(args: list) -> list:
    return [tuple(tuple(x) for x in a) for a in args]


def _first_arg_list_of_tuples(args: list) -> list:
    return [[tuple(x) for x in args[0]], *args[1:]]


def _first_arg_tuple(args: list) -> list:
    return [tuple(args[0]), *args[1:]]


def _second_arg_tuple(args: list) -> list:
    return [args[0], tuple(args[1]), *args[2:]]


def _first_arg_sets(args: list) -> list:
    # Mbpp/115 (empty_dit): non-empty lists were sets; an empty one is an empty dict in the reference.
    return [[set(x) if isinstance(x, list) and x else {} for x in args[0]], *args[1:]]


def _real_and_complex(args: list) -> list:
    return [float(args[0]), complex(args[1])]


def _first_arg_complex(args: list) -> list:
    return [complex(args[0]), *args[1:]]


def _first_arg_tuple_of_mixed(args: list) -> list:
    return [tuple(tuple(x) if isinstance(x, list) else x for x in args[0]), *args[1:]]


def _first_arg_dict_of_tuples(args: list) -> list:
    return [{k: tuple(v) for k, v in args[0].items()}, *args[1:]]


def _all_tuples(args: list) -> list:
    return [_tuple_deep(a) for a in args]


_GROUPS: tuple[tuple[Callable[[list], list], tuple[int, ...]], ...] = (
    (_every_arg_tuple, (2, 116, 132, 143, 222, 261, 273, 394, 399, 421, 424, 429, 470, 560, 579, 596, 616, 630,
                        726, 740, 744, 809)),
    (_every_arg_list_of_tuples, (63, 64, 70, 94, 120, 237, 272, 299, 400, 409, 417, 438, 473, 614, 780)),
    (_first_arg_list_of_tuples, (75, 413, 444, 753)),
    (_second_arg_tuple, (106, 750)),
    (_first_arg_sets, (115,)),
    (_real_and_complex, (124,)),
    (_first_arg_tuple, (250, 307, 405, 446, 617, 720, 763, 808)),
    (_first_arg_complex, (252,)),
    (_every_arg_tuple_of_tuples, (259, 401, 445)),
    (_first_arg_tuple_of_mixed, (278,)),
    (_first_arg_dict_of_tuples, (722,)),
    (_all_tuples, (580, 615, 791)),
)
MBPP_PLUS_CONVERSIONS: dict[int, Callable[[list], list]] = {n: fn for fn, ids in _GROUPS for n in ids}


def task_number(task_id: str) -> int:
    """``"Mbpp/2"`` -> 2."""
    try:
        return int(str(task_id).rsplit("/", 1)[-1])
    except ValueError:
        raise ValueError(f"task_id={task_id!r} does not end in a task number (expected e.g. 'Mbpp/2').") from None


def mbpp_plus_inputs(task_id: str, inputs: list) -> list:
    """The typed argument lists of one MBPP+ task (every call's arguments converted; see module doc)."""
    convert = MBPP_PLUS_CONVERSIONS.get(task_number(task_id))
    if convert is None:
        return inputs
    out = []
    for i, args in enumerate(inputs):
        try:
            out.append(convert(list(args)))
        except (TypeError, ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"{task_id}: input #{i} {str(args)[:120]} does not have the published MBPP+ "
                             f"shape for this task ({e}); is the file the v0.2.0 MbppPlus.jsonl?") from None
    return out
