"""The allowed values of every option that has a fixed set of them, in one place: the modules that
implement an option take its choices from here, and `config.py` checks settings against them.
Plain data with no imports, so that depending on it (every stage does, through its validation)
costs nothing: editing the module that implements an option reruns only the stages that use it."""

DEVICES = ("auto", "cpu", "cuda")                       # device
AMP_MODES = ("none", "bf16")                            # train.amp: fp32, or bf16 autocast
DATASETS = ("fashion_mnist", "cifar10", "cifar100", "imagenet")  # data.name
FOLDER_DATASETS = ("imagenet",)                         # an ImageFolder tree: a manifest, not tensors
MODEL_OPTIONS = {                                       # model.name -> the model.* keys it takes besides name
    "mlp": ("hidden", "batch_norm"),
    "resnet20": ("width",),
    "resnet32": ("width",),
    "vgg19": (),
    "resnet50": ("stem",),
}
MODEL_NAMES = tuple(MODEL_OPTIONS)                      # model.name
STEMS = ("cifar", "imagenet")                           # model.stem (resnet50)
GROW_RULE = {"set": "random", "rigl": "gradient", "granet": "gradient"}  # dst.method -> its regrowth
DST_METHODS = tuple(GROW_RULE)                          # dst.method
GROW_RULES = ("random", "gradient")
PRUNE_RATE_DECAYS = ("constant", "cosine")              # dst.prune_rate_decay
REPICKED = ("keep", "zero")                             # dst.repicked: a weight pruned and regrown at once
DISTRIBUTIONS = ("erk", "uniform")                      # dst.distribution
SUPERPOSE_METHODS = ("caa", "cima")                     # superpose.method
SCOPES = ("global", "layerwise")                        # superpose.scope
REPRUNE_MODES = ("each", "final")                       # superpose.reprune
WANDB_MODES = ("offline", "online", "disabled")         # tracking.wandb.mode
KERNELS = ("auto", "csr", "dense")                      # export.kernel
