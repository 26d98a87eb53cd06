"""Training the joint models on the library, and the trained versions search uses.

data (the library as examples, the held-out split), batches (visual tokens, sentence vectors and the
VideoBERT / CBT batches), state (run directories, state.json, resumable optimiser states, the job row),
loop (``train_library``: the resumable driver), metrics (held-out metrics, baselines, the activation rule),
registry (model versions, the active set, CBT's visual vectors), switch (activating models: index first,
catalog second). Import the submodules; none loads torch until a model is built or loaded.
"""
