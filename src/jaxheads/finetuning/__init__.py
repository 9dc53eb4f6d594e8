"""Fine-tune the chosen head together with the top of its backbone, on images, and save the whole model.

The last step of the data flow. ``finetune(head_dir, dataset, FinetuneConfig(...), out_dir=...)`` starts from a head
written by ``jaxheads sweep`` (``OUT/head``: its meta names the backbone, the weights and their id) and:

* unfreezes the top ``unfreeze`` entries of ``config.blocks`` (for EfficientNet-Lite0: ``head``, ``block15``,
  ...; ``"all"``: every block, the whole network); the others get ``optax.set_to_zero`` and a ``stop_gradient`` in
  the forward pass, so no backward work is spent below the lowest unfrozen block; with ``remat`` every unfrozen
  block is rematerialised (``jax.checkpoint``) in the backward pass;
* trains head and unfrozen blocks with AdamW or SGD with momentum (``optimizer``, ``optax.multi_transform``): the
  head at ``learning_rate``, the top block at ``backbone_learning_rate`` and each block below it ``layer_decay``
  times slower (discriminative rates by depth); every rate rises linearly over ``warmup_epochs`` and then follows a
  cosine to 0 (``schedule``), so the first steps cannot wreck the converged head;
* averages the gradients of ``accumulate`` batches per update (large effective batches in one batch's memory);
* keeps batch-norm statistics frozen (``freeze_bn=True``: every BN layer normalises with its running statistics,
  as at inference) or lets them train (``freeze_bn=False``: the backbone runs in train mode, so every BN layer —
  frozen blocks' included, as the module has one ``train`` flag — uses batch statistics and updates its averages);
* smooths the multiclass training labels (``label_smoothing``) and weighs them by class (``class_weights``:
  ``"balanced"`` from the train split's label frequencies) or draws every class equally often (``sampling``:
  ``"balanced"``, :func:`epoch_order`); val loss is the plain one;
* reads images, not cached features: each epoch decodes the train split in a seeded shuffled order at
  ``crop_scale`` x the input size (default 1.0: no zoom) and, inside the jitted step, takes a random crop and draws
  the ``augment`` policy per example (:mod:`jaxheads.finetuning.augment`: the names of
  :mod:`jaxheads.data.augment` — flips, the dihedral group, crops, scale and a small affine jitter — in JAX);
* runs one jitted, data-parallel step: the batch is sharded over every device of ``parallel.make_mesh(1)``, the
  variables are replicated; the last (ragged) batch is padded to the compiled shape with copies of its own images
  and the copies are masked out of the loss;
* keeps an exponential moving average of the weights (``ema_decay``), started at the swept model; the average is
  what is evaluated, kept and saved;
* evaluates on ``val`` after every epoch — epoch 0 is the starting model, i.e. the frozen backbone with the swept
  head, so its val metric is the head's — keeps the best weights on the chosen ``metric`` (only gains are kept:
  when no epoch beats epoch 0 the saved model is the frozen one), and stops early after ``patience`` epochs
  without improvement;
* writes a checkpoint after every epoch (through :mod:`jaxheads.checkpoint`, i.e. orbax), so a killed run started
  again with ``resume`` (``--resume``) continues from the last finished epoch and ends with the same model as an
  uninterrupted run (the order, the augmentation and the dropout masks are functions of (seed, epoch, step));
* measures the gain over the frozen model with intervals: a paired bootstrap of the examples, on val (optimistic:
  the epoch was chosen there) and, when the dataset has a test split, on test, scored once at the end
  (``FinetuneResult.gain``, ``FinetuneResult.gain_lines()``);
* saves the best model — backbone and head variables, the head spec and the provenance — as ``OUT/model``, and
  writes ``OUT/report.md`` and ``OUT/report.html`` (:mod:`jaxheads.finetuning.report`): the recipe, the gain over
  the frozen head in accuracy, balanced accuracy and macro-F1 with intervals, and the epochs.

A fine-tune runs in one process (on all its devices); the run's identity (settings, head weights, backbone
weights, dataset fingerprints, device count) is stored with every checkpoint, and a checkpoint of another run in
the same ``out_dir`` is refused, never mixed in.

``load_model(OUT/model)`` gives a :class:`Model` whose jitted ``predict(images)`` returns probabilities (and
``logits(images)`` the logits) for uint8 RGB images of the model's input size.

Where the parts live:

* :mod:`jaxheads.finetuning.config` — :class:`FinetuneConfig` (the settings) and :class:`FinetuneResult`;
* :mod:`jaxheads.finetuning.model` — the inference forward pass, :class:`Model` and :func:`load_model`;
* :mod:`jaxheads.finetuning.step` — the jitted training step (frozen blocks, weighted loss, accumulation, update);
* :mod:`jaxheads.finetuning.augment` — the on-device augmentation; :mod:`jaxheads.finetuning.optim` — the
  optimiser and its schedule; :mod:`jaxheads.finetuning.remat` — rematerialised blocks;
* :mod:`jaxheads.finetuning.loop` — the epochs: batches, val evaluation, early stopping;
* :mod:`jaxheads.finetuning.state` — epoch checkpoints, resume, and the saved model and result;
* :mod:`jaxheads.finetuning.report` — the fine-tune's report;
* this module — :func:`finetune`, which checks the head, the dataset and the backbone against each other and runs
  the loop.
"""

from .config import FinetuneConfig, FinetuneResult, epoch_order
from .model import MODEL_KIND, Model, Variables, load_model, model_logits
from .run import finetune
from .state import KEEP_CHECKPOINTS, MODEL_DIR, RESULT_FILE, STATE_DIR, STATE_KIND
from .step import TrainState

__all__ = [
    "FinetuneConfig",
    "FinetuneResult",
    "KEEP_CHECKPOINTS",
    "MODEL_DIR",
    "MODEL_KIND",
    "Model",
    "RESULT_FILE",
    "STATE_DIR",
    "STATE_KIND",
    "TrainState",
    "Variables",
    "epoch_order",
    "finetune",
    "load_model",
    "model_logits",
]
