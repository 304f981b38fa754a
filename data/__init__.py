"""Input pipelines: sources (TFDS, local IDX files), batch transforms, Grain loaders."""
