"""ToonVision: labelImg screenshots in, Keras image classifiers out.

Stages, one module each, data flowing one way::

    voc      labelImg XML          -> Annotation value objects
    extract  screenshots + XML     -> img/unsorted/<group>/<label>_<index>.png + manifest
    synth    a seed                -> synthetic street screenshots + XML (demo data)
    tasks    pool labels           -> task classes (binary, suit, name, animal, label)
    split    pool + task           -> img/data/<task>/{train,validate,test}/<class>/
    datasets split folders         -> tf.data pipelines
    models   a name                -> a compiled Keras model
    train    repeated runs         -> models/<task>/best.keras + best.json
    evaluate a model + its split   -> metrics, predictions, plots
    export   a model               -> .onnx / .tflite / SavedModel + JSON, checked against Keras
    runtimes a model or an export  -> probabilities (Keras, ONNX Runtime, LiteRT, TensorFlow)
    plots    numbers               -> matplotlib figures
    cli      argv                  -> one call into the stages above
"""

__version__ = "0.1.0"
