"""``@task.flux2``: a function returns prompts, the task is the generate operator — dag.test() against
the emulator over HTTP, deferrable and not."""

from __future__ import annotations

import itertools
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from airflow.sdk import DAG, task

from airflow_provider_flux2.decorators.flux2 import XCOM_PROMPTS
from airflow_provider_flux2.exceptions import FluxValidationError
from airflow_provider_flux2.prompts import prompt_items

_ids = itertools.count()


def ledger_total(emulator) -> Decimal:
    return sum((Decimal(e["cost"]) for e in emulator.ledger()["entries"]), Decimal("0"))


@pytest.mark.parametrize("deferrable", [True, False])
def test_a_function_returning_prompts_generates_them(emulator, run_dag, xcom, tmp_path, deferrable, capfd):
    calls = []

    with DAG(f"t_decorator_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task.flux2(
            image_size="square",
            seed=5,
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            progress_interval=0,
            deferrable=deferrable,
            budget_usd="1.00",
        )
        def product_shots(ds=None):
            calls.append(ds)
            return ["a red sneaker", {"prompt": "a blue mug", "id": "MUG-1"}, "a green lamp"]

        product_shots()

    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "product_shots")
    assert [r["prompt"] for r in records] == ["a red sneaker", "a blue mug", "a green lamp"]
    assert all(r["status"] == "succeeded" and Path(r["uri"][7:]).is_file() for r in records)
    assert records[1]["extra"]["id"] == "MUG-1"
    assert xcom(dr, "product_shots", key=XCOM_PROMPTS)[1] == {"prompt": "a blue mug", "id": "MUG-1"}
    # The function ran once, also when the task deferred and resumed; three images billed, once each.
    assert len(calls) == 1
    assert len(emulator.ledger()["entries"]) == 3 and ledger_total(emulator) == Decimal("0.090")
    out = capfd.readouterr()
    assert "@task.flux2: 3 prompt(s) from product_shots()" in out.out + out.err


def test_rows_and_a_template_become_items_with_ids(emulator, run_dag, xcom, tmp_path):
    with DAG(f"t_decorator_rows_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task.flux2(
            prompt_template="studio photo of a {colour} {name}",
            id_column="sku",
            image_size="square",
            output_uri=tmp_path.as_uri(),
            poll_interval=0.02,
            deferrable=True,
        )
        def catalogue():
            return [{"sku": "A-1", "name": "sneaker", "colour": "red"}, {"sku": "B-2", "name": "mug", "colour": "blue"}]

        catalogue()

    dr = run_dag(dag)
    assert dr.state == "success"
    records = xcom(dr, "catalogue")
    assert [(r["extra"]["id"], r["prompt"]) for r in records] == [
        ("A-1", "studio photo of a red sneaker"),
        ("B-2", "studio photo of a blue mug"),
    ]
    assert all(r["source_hash"] for r in records)


def test_a_function_returning_nothing_skips_the_task_and_pays_nothing(emulator, run_dag, task_states, tmp_path):
    with DAG(f"t_decorator_empty_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)) as dag:

        @task.flux2(output_uri=tmp_path.as_uri())
        def nothing_new():
            return []

        nothing_new()

    dr = run_dag(dag)
    assert task_states(dr)["nothing_new"] == "skipped"
    assert emulator.ledger()["entries"] == []


def test_a_bad_argument_fails_when_the_dag_is_parsed():
    with DAG(f"t_decorator_bad_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.flux2(model="klein", output_uri="/tmp/x")
        def shots():
            return ["a cup"]

        with pytest.raises(FluxValidationError) as err:
            shots()
    assert err.value.field == "model"


def test_prompts_are_the_return_value_not_an_argument():
    with DAG(f"t_decorator_prompts_{next(_ids)}", schedule=None, start_date=datetime(2026, 1, 1)):

        @task.flux2(prompts=["a cup"])
        def shots():
            return ["a cup"]

        with pytest.raises(TypeError, match="from the function's return value"):
            shots()


def test_the_decorator_is_registered_with_airflow():
    try:  # Airflow >= 3.2: the Task SDK's own registry
        from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime as Manager
    except ImportError:
        from airflow.providers_manager import ProvidersManager as Manager

    assert "flux2" in Manager().taskflow_decorators


Row = namedtuple("Row", "sku name")


@dataclass
class Product:
    sku: str
    name: str


def test_prompt_items_reads_strings_dicts_and_rows():
    assert prompt_items("a cup") == ["a cup"]
    assert prompt_items({"prompt": "a cup", "seed": 3}) == [{"prompt": "a cup", "seed": 3}]
    items = prompt_items([Row("A", "cup"), Product("B", "mug")], template="a {name}", id_column="sku")
    assert [(i["id"], i["prompt"]) for i in items] == [("A", "a cup"), ("B", "a mug")]
    assert items[0]["source_hash"] != items[1]["source_hash"]


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (42, "return value"),
        ([("A", "cup")], "return value[0]"),
        ([{"name": "cup"}], "return value[0]"),
        (None, "return value"),
    ],
)
def test_prompt_items_names_what_it_cannot_read(value, field):
    with pytest.raises(FluxValidationError) as err:
        prompt_items(value)
    assert err.value.field == field
