"""Defaults shared by every config; each experiment file overrides what it needs.

Every field can be overridden from the command line, e.g.
  python launch.py --config=configs/vit_fashion_mnist.py --config.batch_size=256
Units are in the names (…_steps, …_epochs, …_prob).
"""

import ml_collections


# Where each dataset is read from, its training-set pixel mean / std ([0, 1] units) and
# its splits. Model selection never looks at the test split: CIFAR holds out the last
# 10 % of its training split (5,000 images) for validation, ImageNet the last 1 %
# (12,812; its 'validation' split is the usual test set). Fashion-MNIST trains on all
# 60,000 training images with selection disabled (the last checkpoint is tested);
# hold out part of it with e.g. --config.data.train_split='train[:55000]'
# --config.data.validation_split='train[55000:]'.
DATASET_PRESETS = {
    'cifar10': dict(source='tfds', name='cifar10', mean=(0.4914, 0.4822, 0.4465),
                    std=(0.2470, 0.2435, 0.2616), train_split='train[:90%]',
                    validation_split='train[90%:]', test_split='test'),
    'fashion_mnist': dict(source='local_fashion_mnist', name='fashion_mnist', mean=(0.286,),
                          std=(0.353,), train_split='train', validation_split='',
                          test_split='test'),
    'imagenet2012': dict(source='tfds', name='imagenet2012', mean=(0.485, 0.456, 0.406),
                         std=(0.229, 0.224, 0.225), train_split='train[:99%]',
                         validation_split='train[99%:]', test_split='validation'),
}


def set_dataset(c: ml_collections.ConfigDict, preset: str) -> None:
  """Sets c.data.source, name, mean, std and the splits from DATASET_PRESETS[preset]."""
  c.data.update(DATASET_PRESETS[preset])


def get_base_config() -> ml_collections.ConfigDict:
  """The shared fields with neutral defaults."""
  c = ml_collections.ConfigDict()
  c.task = 'classification'       # A name from tasks.REGISTRY: 'classification', 'seq2seq'
                                  # (get_seq2seq_config), 'segmentation' (get_segmentation_config),
                                  # 'detection' (get_detection_config).
  c.seed = 0                      # Seeds init, dropout and the data order/augmentation.
  c.num_train_steps = -1          # Optimizer steps; when > 0 it overrides num_epochs.
  c.num_epochs = 10.0             # Passes over the training split (fractions allowed).
  c.batch_size = 128              # Global batch over all devices and processes.
  c.eval_batch_size = 500         # Global eval batch (the last one is padded and masked).
  c.learning_rate = 1e-3          # Peak learning rate, reached at the end of warmup.
  c.warmup_steps = 500            # Linear warmup from 0, in optimizer steps.
  c.label_smoothing = 0.0         # epsilon of label smoothing (Szegedy et al. 2016).
  c.compute_dtype = 'float32'     # 'float32' or 'bfloat16' (parameters stay float32).
  c.grad_accum_steps = 1          # Micro-batches per optimizer step (batch_size is the total).
  c.parallel = 'jit'              # 'jit' (Mesh + NamedSharding) or 'pmap'.
  c.num_classes = 10              # Used only for datasets not in data.sources.DATASETS.
  c.eval_every_steps = 1000       # Validation-split evaluation interval; 0: at the end only.
  c.checkpoint_every_steps = 1000  # 0: checkpoint only at the end (and on SIGTERM);
  # every validation also saves one, so that the best validated step can be selected.
  c.log_every_steps = 100         # Train metrics are fetched from the device only here.
  c.init_from = ''                # A converted weight directory (python -m pretrained.convert)
                                  # or a run's workdir, loaded into a fresh run (not at a
                                  # resume); see pretrained/.
  c.init_into = ''                # '' = the whole model; a module ('encoder'): load
                                  # init_from (e.g. a classifier run) into that part only.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'vit_custom'     # A name from nets.REGISTRY; other fields go to the model.

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'adamw'          # 'adamw' or 'sgd'.
  c.optim.b1 = 0.9                # Adam beta1.
  c.optim.b2 = 0.999              # Adam beta2.
  c.optim.eps = 1e-8              # Adam epsilon.
  c.optim.momentum = 0.9          # SGD momentum.
  c.optim.nesterov = False        # SGD Nesterov momentum.
  c.optim.weight_decay = 0.0      # Weight decay coefficient (x learning rate).
  c.optim.weight_decay_mode = 'decoupled'  # 'decoupled' (AdamW/SGDW, after the moments)
                                  # or 'coupled' (L2 added to the gradient, PyTorch SGD).
  c.optim.no_decay_names = ('pos_embedding', 'cls_token', 'source_positions',
                            'target_positions')  # Parameter paths never decayed: position
                                  # embeddings (ViT, the Transformer's learned ones), the
                                  # class token; biases and norm scales (any rank) neither.
  c.optim.grad_clip_norm = 1.0    # Global-norm gradient clipping; 0 disables it.
  c.optim.schedule = 'cosine'     # 'cosine', 'linear', 'step', 'rsqrt' or 'constant'.
  c.optim.end_learning_rate_factor = 0.0  # Final lr / peak lr for cosine and linear.
  c.optim.step_boundaries = (0.5, 0.75)   # 'step': fractions of the decay phase ...
  c.optim.step_factor = 0.1               # ... where the lr is multiplied by this.
  c.optim.ema_decay = 0.0         # > 0 (e.g. 0.999): keep an exponential moving average
                                  # of the weights (BatchNorm statistics included) and
                                  # validate, test, select, predict and export with it.

  c.data = ml_collections.ConfigDict()
  c.data.source = 'tfds'          # 'tfds' or 'local_fashion_mnist'.
  c.data.name = 'cifar10'         # TFDS dataset name (see data.sources.DATASETS).
  c.data.dir = ''                 # local_fashion_mnist: IDX folder ('' = Debian's path).
  c.data.tfds_data_dir = ''       # TFDS data dir ('' = TFDS default, ~/tensorflow_datasets).
  c.data.train_split = 'train'    # Split trained on; TFDS slicing works ('train[:90%]').
  c.data.validation_split = ''    # Evaluated every eval_every_steps; its best checkpoint
                                  # (checkpoint.best_metric) is the one tested at the end.
                                  # '' = none: no periodic evaluation, the last is tested.
  c.data.test_split = 'test'      # Evaluated once, at the end, with the selected checkpoint.
  c.data.mean = (0.5, 0.5, 0.5)   # Per-channel normalisation, in [0, 1] units.
  c.data.std = (0.5, 0.5, 0.5)
  c.data.eval_crop_size = 0      # > 0: eval images are resized (shorter side to
  c.data.eval_resize_size = 0    # eval_resize_size) and center-cropped to this size.
  c.data.num_threads = 4          # Grain reader threads per process.
  c.data.prefetch_batches = 8     # Grain prefetch buffer, in elements.
  c.data.num_workers = 0          # Grain worker processes (0: threads only).

  c.augment = ml_collections.ConfigDict()
  c.augment.random_resized_crop_size = 0  # > 0: Inception-style random-resized crop to
                                  # this size (per example, before batching).
  c.augment.random_resized_crop_scale = (0.08, 1.0)  # Its range of crop area fractions.
  c.augment.crop_padding = 0      # Random crop after zero padding by this many pixels.
  c.augment.flip = False          # Random horizontal flip.
  c.augment.random_erasing_prob = 0.0  # Random Erasing probability (Zhong et al. 2017).
  c.augment.mixup_alpha = 0.0     # Mixup Beta(alpha, alpha); 0 disables.
  c.augment.cutmix_alpha = 0.0    # CutMix Beta(alpha, alpha); 0 disables.
  c.augment.on_device = False     # Crop, flip, erasing, mixup/CutMix, normalisation in the
                                  # jitted train step (data/device_augment.py), not on the host.

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3           # Most recent checkpoints kept.
  c.checkpoint.best_metric = 'top1'  # Keep the best checkpoint by this validation metric
  c.checkpoint.best_mode = 'max'  # ... 'max' or 'min' (loss, WER) of it.
  c.checkpoint.async_save = True  # Write checkpoints in the background.
  return c


def get_seq2seq_config() -> ml_collections.ConfigDict:
  """The shared fields plus those of sequence-to-sequence tasks (data.seq2seq)."""
  c = get_base_config()
  c.task = 'seq2seq'
  c.model.name = 'transformer_base'
  c.model.share_embeddings = 'none'  # 'none', 'decoder' or 'all' (one shared vocabulary).
  c.model.position_encoding = 'sinusoidal'  # or 'learned'.
  c.model.pre_ln = False          # True: pre-LN sub-layers (post-LN is the paper's).
  c.model.attention_impl = 'auto'  # 'auto' (cuDNN flash attention on a GPU in bf16/fp16,
                                  # else batched matmuls), 'matmul', 'xla' or 'cudnn'.
  c.data.source = 'cmudict'       # 'cmudict' (G2P, offline) or 'tfds' (wmt14_translate/de-en).
  c.data.name = 'cmudict'
  c.data.train_split = 'train'    # cmudict: 'train', 'dev' or 'test'; tfds: TFDS split names.
  c.data.validation_split = 'dev'
  c.data.test_split = 'test'
  c.data.keep_stress = False      # cmudict: keep the stress digits of vowels (AH0).
  c.data.max_length = 32          # Tokens per sequence, </s> included (inputs and targets).
  c.data.length_policy = 'filter'  # Longer training examples: 'filter' or 'truncate'.
  c.data.pack = True              # Pack several examples per row (batch_size counts rows).
  c.decode = ml_collections.ConfigDict()
  c.decode.beam_size = 1          # 1: greedy search; > 1: beam search.
  c.decode.alpha = 0.6            # Length penalty exponent (Wu et al. 2016).
  c.decode.max_length = 32        # Most output tokens, </s> included.
  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'
  return c


def get_segmentation_config() -> ml_collections.ConfigDict:
  """The shared fields plus those of semantic segmentation (tasks/segmentation.py,
  data/segmentation.py); defaults: UNet++ on 64x64 Fashion-MNIST scenes."""
  c = get_base_config()
  c.task = 'segmentation'
  c.model.name = 'unetpp'         # 'unetpp' (Zhou et al. 2018) or 'unet' (Ronneberger et al.).
  c.model.depth = 4               # Poolings: input sides must be multiples of 2**depth.
  c.model.width = 1.0             # x the paper's filters (32, 64, 128, 256, 512).
  c.model.deep_supervision = True  # UNet++: a 1x1 head on each X^{0,j}, losses averaged.
  c.model.encoder = 'plain'       # 'plain' (the papers') or a ResNet: 'resnet18', 'resnet34', ...
  c.data.source = 'fashion_mnist_scenes'  # 'fashion_mnist_scenes', 'stardist_nuclei', 'tfds'.
  c.data.name = 'fashion_mnist_scenes'    # tfds: 'oxford_iiit_pet'.
  c.data.train_split = 'train[:55000]'    # Scenes: Fashion-MNIST items each scene is made of;
  c.data.validation_split = 'train[55000:]'  # eval scenes use items never trained on.
  c.data.test_split = 'test'
  c.data.num_classes = 11         # Including background (class 0).
  c.data.ignore_label = 255       # Label value of pixels no loss or metric counts.
  c.data.image_size = 64          # pets / nuclei: side of the (resized / tiled) images.
  c.data.canvas_size = 64         # Scenes: canvas side in pixels.
  c.data.num_train_scenes = 50000  # Scenes generated (deterministically) per split:
  c.data.num_eval_scenes = 2000   # training, and each of validation and test.
  c.data.mean = (0.170,)          # Scenes' pixel mean / std (2,000 training scenes).
  c.data.std = (0.298,)
  c.augment.flip = True           # Random horizontal flip of image and label.
  c.augment.scale_range = (1.0, 1.0)  # Random rescale factor range, then crop/pad back.
  c.loss = ml_collections.ConfigDict()
  c.loss.name = 'bce_dice'        # tasks.dense_losses: 'cross_entropy', 'binary_cross_entropy',
                                  # 'dice', 'bce_dice' (the UNet++ paper's), 'focal',
                                  # 'tversky', 'focal_tversky'.
  c.loss.dice_eps = 1.0           # Smoothing of Dice / Tversky.
  c.loss.focal_gamma = 2.0        # Focal loss exponent (Lin et al. 2017).
  c.loss.tversky_alpha = 0.3      # Tversky weight of false positives (Salehi et al. 2017)
  c.loss.tversky_beta = 0.7       # ... and of false negatives.
  c.loss.focal_tversky_gamma = 0.75  # Focal Tversky exponent (Abraham & Khan 2019: 1 / (4/3)).
  c.inference = ml_collections.ConfigDict()
  c.inference.head = 'last'       # Deep supervision at inference: 'last' head or 'mean' of all.
  c.inference.level = 0           # UNet++ pruned to L1..L4 at inference; 0: the whole network.
  c.inference.flip = False        # Test-time augmentation: mean with the mirror image's output.
  c.checkpoint.best_metric = 'miou'
  c.checkpoint.best_mode = 'max'
  return c


# YOLOv3's anchors (Redmon & Farhadi 2018, Sec. 2.3: k-means on COCO), (width, height) in
# pixels of 416x416 inputs, three per scale, stride 8 first. `python -m data.anchors`
# computes a dataset's own.
YOLOV3_COCO_ANCHORS = ((10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119),
                       (116, 90), (156, 198), (373, 326))


def get_detection_config() -> ml_collections.ConfigDict:
  """The shared fields plus those of object detection (tasks/detection.py,
  data/detection.py); defaults: YOLOv3 (Darknet-53) on 64x64 Fashion-MNIST scenes."""
  c = get_base_config()
  c.task = 'detection'
  c.model.name = 'yolov3'         # 'yolov3' (Darknet-53) or yolov3_<backbone>, e.g.
                                  # 'yolov3_mobilenet_v2', 'yolov3_resnet18'.
  c.model.width = 1.0             # Backbone channel multiplier.
  c.model.neck_width = 1.0        # x the neck's channels (512, 256, 128).
  c.anchors = YOLOV3_COCO_ANCHORS  # (w, h) in input pixels, 3 per scale, stride 8 first.
  c.data.source = 'fashion_mnist_scenes'  # 'fashion_mnist_scenes', 'neon_trees', 'tfds'.
  c.data.name = 'fashion_mnist_scenes'    # tfds: 'voc' or 'coco/2017'.
  c.data.train_split = 'train[:55000]'    # Scenes: the Fashion-MNIST items scenes are made
  c.data.validation_split = 'train[55000:]'  # of; eval scenes use items never trained on.
  c.data.test_split = 'test'
  c.data.image_size = 64          # Network input side (letterboxed); a multiple of 32.
  c.data.max_boxes = 8            # Boxes per image in a batch (the rest dropped, counted).
  c.data.canvas_size = 64         # Scenes: canvas side in pixels.
  c.data.num_train_scenes = 50000  # Scenes generated per split: training, and each of
  c.data.num_eval_scenes = 2000   # validation and test.
  c.data.min_visible = 0.25       # Scenes: items with less of them visible have no box.
  c.data.mean = (0.170,)          # Scenes' pixel mean / std (as segmentation's).
  c.data.std = (0.298,)
  c.augment.flip = True           # Random horizontal flip of image and boxes.
  c.augment.scale_range = (1.0, 1.0)  # Random rescale factor range ...
  c.augment.translate = 0.0       # ... and shift (fraction of the side), then crop/pad.
  c.augment.mosaic_prob = 0.0     # Mosaic of 4 images (Bochkovskiy et al. 2020).
  c.augment.brightness = 0.0      # Colour jitter strengths (0: off).
  c.augment.contrast = 0.0
  c.augment.saturation = 0.0
  c.loss = ml_collections.ConfigDict()
  c.loss.box_loss = 'ciou'        # 'original' (YOLOv3), 'iou', 'giou', 'diou' or 'ciou'.
  c.loss.ignore_threshold = 0.5   # Unassigned predictions overlapping a box more: no loss.
  c.loss.assign_threshold = 0.0   # > 0: also every anchor of shape IoU above (YOLOv4: 0.213).
  c.loss.box_weight = 1.0         # Weights of the loss terms (each summed per image).
  c.loss.obj_weight = 1.0
  c.loss.cls_weight = 1.0
  c.loss.class_loss = 'sigmoid'   # 'sigmoid' (YOLOv3: independent, multi-label) or
                                  # 'softmax' (YOLOv2: one class per box, classes compete).
  c.inference = ml_collections.ConfigDict()
  c.inference.flip = False        # Test-time augmentation: the mirror image's boxes join NMS.
  c.nms = ml_collections.ConfigDict()
  c.nms.method = 'greedy'         # 'greedy', 'diou' (DIoU-NMS), 'soft_linear', 'soft_gaussian'.
  c.nms.iou_threshold = 0.5       # Suppression threshold (Soft-NMS linear: N_t).
  c.nms.score_threshold = 0.001   # Candidates (and Soft-NMS-decayed boxes) below are dropped.
  c.nms.pre_nms_top_k = 1000      # Best candidates per image entering NMS.
  c.nms.max_detections = 100      # Detections per image (COCO evaluates 100).
  c.nms.diou_beta = 1.0           # DIoU-NMS exponent of the distance term.
  c.nms.soft_sigma = 0.5          # Gaussian Soft-NMS sigma (Bodla et al. 2017).
  c.checkpoint.best_metric = 'AP'
  c.checkpoint.best_mode = 'max'
  return c
