"""Input data: Grain pipelines and sources. Which data object a run reads is its task
module's `build_data(config)` (tasks/)."""
