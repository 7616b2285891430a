"""`<source>_kafka`: a source's published changes on its Kafka topics, an asset of its own.

Downstream of `<source>_published` and partitioned the same way, so the UI shows which versions
reached the topics, a backfill replays versions into them, and a failure here (brokers down, a
topic missing) fails this asset's run without undoing the publish. Its check, `records_produced`,
passes when every change the version published is on each topic or a dead letter. The producing
itself, checkpoints and resume included, is core/sinks.py.
"""

import warnings

import dagster as dg

from harmonizer_dagster.core.sinks import NotPublished, Produced, SinkError, produce_version
from harmonizer_dagster.core.spec import SourceSpec
from harmonizer_dagster.orchestration.partitions import backfill_policy, partitions_for
from harmonizer_dagster.orchestration.resources import KafkaResource, WarehouseResource

CHECK = "records_produced"


def sink_asset_key(spec: SourceSpec) -> dg.AssetKey:
    return dg.AssetKey(f"{spec.name}_kafka")


def _check_evaluation(spec: SourceSpec, partition_key: str, produced: list[Produced]) -> dg.AssetCheckEvaluation:
    short = [p for p in produced if not p.complete]
    return dg.AssetCheckEvaluation(
        asset_key=sink_asset_key(spec),
        partition=partition_key,
        check_name=CHECK,
        passed=not short,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(
            f"{p.sink}: {p.produced} produced + {p.dead_letters} dead letter(s) of {p.changes} change(s)"
            for p in produced
        ),
        metadata={
            p.sink: dg.MetadataValue.json(
                {
                    "changes": p.changes,
                    "produced": p.produced,
                    "dead_letters": p.dead_letters,
                    "changes_published": p.changes_published,
                }
            )
            for p in produced
        },
    )


def build_sink_asset(spec: SourceSpec, automatic: bool, host_tags: dict[str, str]) -> dg.AssetsDefinition:
    """The asset producing the source's published versions to the topics its spec declares."""
    key = sink_asset_key(spec)
    with warnings.catch_warnings():
        # Partitioned asset checks are a preview feature in Dagster 1.13 (see checks.py).
        warnings.simplefilter("ignore", dg.PreviewWarning)
        check = dg.AssetCheckSpec(
            CHECK,
            asset=key,
            partitions_def=partitions_for(spec),
            description="Every change the version published is on each topic, or a dead letter.",
        )

    @dg.multi_asset(
        name=key.path[-1],
        specs=[
            dg.AssetSpec(
                key,
                deps=[f"{spec.name}_published"],
                description=f"{spec.title}: each published version's changes on Kafka topic(s) "
                + ", ".join(sink.topic for sink in spec.sinks),
                owners=[spec.owner],
                kinds={"kafka"},
                tags={"source": spec.name, **host_tags},
                partitions_def=partitions_for(spec),
                automation_condition=dg.AutomationCondition.eager() if automatic else None,
                skippable=True,
            )
        ],
        check_specs=[check],
        backfill_policy=backfill_policy(),
        can_subset=True,
    )
    def kafka_sink(context: dg.AssetExecutionContext, warehouse: WarehouseResource, kafka: KafkaResource):
        store = warehouse.open()
        settings = kafka.settings()
        for partition_key in context.partition_keys:
            produced = []
            for sink in spec.sinks:
                try:
                    result = produce_version(store, spec, sink, partition_key, settings, context.run_id)
                except NotPublished as exc:
                    context.log.warning(f"{partition_key}: {exc}")
                    break
                except SinkError as exc:
                    raise dg.Failure(str(exc)) from None
                resumed = f", resumed after {result.resumed_from}" if result.resumed_from else ""
                context.log.info(
                    f"{partition_key} -> {sink.topic}: {result.produced} produced, {result.dead_letters} dead "
                    f"letter(s) of {result.changes} change(s) in {result.seconds:.1f} s{resumed}"
                )
                produced.append(result)
            if not produced:
                continue
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=key,
                    partition=partition_key,
                    metadata={
                        "source_id": produced[0].source_id,
                        "changes": produced[0].changes,
                        "produced": sum(p.produced for p in produced),
                        "dead_letters": sum(p.dead_letters for p in produced),
                        "topics": ", ".join(sink.topic for sink in spec.sinks),
                    },
                )
            )
            context.log_event(_check_evaluation(spec, partition_key, produced))  # type: ignore[arg-type]
        # Each partition's materialization and check are reported above, as each is produced.
        yield from ()

    return kafka_sink
