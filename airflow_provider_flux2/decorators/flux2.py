"""``@task.flux2``: a function returns the night's prompts; the task generates them.

The function runs on the worker when the task starts. What it returns — one prompt, or a list of
prompts, dicts and rows (see :func:`~airflow_provider_flux2.prompts.prompt_items`) — becomes the
``prompts`` of a :class:`~airflow_provider_flux2.operators.flux.FluxGenerateImageOperator`, and the
task is that operator from there on: the same plan line, budget, window, deferral, records and
manifest. Every keyword of the operator is a keyword of the decorator::

    @task.flux2(image_size="square_hd", budget_usd="5.00", output_uri="s3://bucket/products")
    def product_shots(ds=None):
        return [f"studio photo of {name}, white background" for name in catalogue(ds)]

The prompts are kept with the task (XCom ``flux2_prompts``), so a deferred task resumes from the
prompts it planned, without calling the function again. A function that returns nothing to make
skips the task.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, determine_kwargs, task_decorator_factory
from airflow.sdk.definitions.context import context_merge

try:
    from airflow.sdk.exceptions import AirflowSkipException
except ImportError:  # Airflow 3.1: the Task SDK takes it over in 3.2
    from airflow.exceptions import AirflowSkipException  # type: ignore[no-redef]

from airflow_provider_flux2.operators.flux import FluxGenerateImageOperator
from airflow_provider_flux2.prompts import prompt_items

if TYPE_CHECKING:
    from airflow.sdk import Context

#: The XCom holding the prompts the function returned (read back when a deferred task resumes).
XCOM_PROMPTS = "flux2_prompts"


class _Flux2DecoratedOperator(DecoratedOperator, FluxGenerateImageOperator):
    """The generate operator, with its prompts from the decorated function.

    :param prompt_template: for rows without a ``prompt`` column: a template with ``{column}`` fields.
    :param id_column: for rows: the column that identifies an item (the record's ``id``, the image's name).
    """

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *FluxGenerateImageOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **FluxGenerateImageOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.flux2"
    _prompts_at_run_time = True
    overwrite_rtif_after_execution: bool = True

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        prompt_template: str | None = None,
        id_column: str | None = None,
        **kwargs: Any,
    ) -> None:
        for name in ("prompt", "prompts"):
            if name in kwargs:
                raise TypeError(f"@task.flux2 takes its prompts from the function's return value, not {name}=")
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)
        self.prompt_template = prompt_template
        self.id_column = id_column

    def execute(self, context: Context) -> Any:
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        items = prompt_items(
            self.python_callable(*self.op_args, **kwargs), template=self.prompt_template, id_column=self.id_column
        )
        if not items:
            raise AirflowSkipException("@task.flux2: the function returned no prompts; nothing to generate")
        self.log.info("@task.flux2: %d prompt(s) from %s()", len(items), self.python_callable.__name__)
        context["ti"].xcom_push(key=XCOM_PROMPTS, value=items)
        self.prompts = items
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        ti = context["ti"]
        self.prompts = ti.xcom_pull(task_ids=ti.task_id, key=XCOM_PROMPTS, map_indexes=ti.map_index)
        return self._handle_output(return_value=super().execute_complete(context, event))


def flux2_task(python_callable: Callable[..., Any] | None = None, **kwargs: Any) -> TaskDecorator:
    """``@task.flux2(**operator kwargs)``: wrap a function returning prompts into a FLUX 2 generate task.

    :param python_callable: the decorated function.
    :param kwargs: any :class:`~airflow_provider_flux2.operators.flux.FluxGenerateImageOperator`
        keyword (``model``, ``image_size``, ``budget_usd``, ``output_uri``, ``deferrable``…), plus
        ``prompt_template`` and ``id_column`` for rows.
    """
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=_Flux2DecoratedOperator, **kwargs
    )


__all__ = ["XCOM_PROMPTS", "flux2_task"]
