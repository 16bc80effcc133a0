"""ToonVision: labelImg screenshots in, Keras image classifiers out.

Stages, one module each, data flowing one way::

    voc        labelImg XML           -> Annotation value objects (warnings typed by kind)
    images     untrusted image bytes  -> 8-bit RGB Pillow images (bomb limit, EXIF, alpha on white)
    extract    screenshots + XML      -> img/unsorted/<group>/<label>_<index>.png
    manifest   the pool's ledger      -> CropRecord rows (manifest.csv), load_pool
    dedup      the pool's hashes      -> exact and near-duplicate screenshots and crops, leaks
    synth/     a seed                 -> synthetic street screenshots + XML (demo data)
    tasks      pool labels            -> task classes (binary, suit, name, animal, label)
    split      pool + task            -> img/data/<task>/{train,validate,test}/<class>/
    report     pool + task            -> balance-report tables and figures
    decode     crop files, images     -> the one decode and resize every stage uses
    cache      crops of a split       -> decoded crops kept in RAM or on disk
    augment    a batch                -> one fused affine resample per training image
    datasets   a split plan           -> tf.data pipelines
    models     a name or hparams      -> a compiled Keras model
    train      repeated runs          -> finished runs, committed by the ledger
    executors  independent runs       -> run here one at a time, or as Ray tasks (results in any order)
    ledger     finished runs          -> models/<task>/runs.csv, best.keras + best.json
    compare    models x re-splits     -> models/<task>/compare/
    tune       a search space         -> models/<task>/tune/ (keras-tuner trials, best_hparams.json)
    metrics    labels, probabilities  -> accuracy, per-class F1, confusion matrix (pure)
    modelfile  a model file           -> a safely loaded model with its classes and input size
    predict    images or screenshots  -> one prediction per crop or object
    evaluate   a model + its split    -> evaluation.json, predictions.csv, figures
    explain    a model + images       -> Grad-CAM overlays
    export     a model                -> .onnx / .tflite / SavedModel + JSON, checked against Keras
    runtimes   a model or an export   -> probabilities (Keras, ONNX Runtime, LiteRT, TensorFlow)
    modelreport a trained model folder -> one self-contained report.html
    plots      numbers                -> matplotlib figures
    demo       nothing                -> the whole pipeline on synthetic data
    cli        argv                   -> one call into the stages above

Beside them: ``layout`` (every path), ``constants`` (defaults, ``HW``), ``errors`` (the
exception tree), ``problems`` (typed per-file problems), ``fsutil`` (atomic writes),
``locks`` (the one folder lock), ``progress`` (tqdm or nothing), ``labels`` (label rules).
"""

__version__ = "0.1.0"
