"""A model's fcn.json, the file beside every model: its training size, its classes and how it
was trained, as a ModelInfo. It is read (ModelInfo.read) and written (ModelInfo.write) here
only; the rest of the project reads its attributes. Free of TensorFlow: predict.py and serve.py
read it before, or without, loading TensorFlow.

A ModelInfo holds only the fields that apply to its model (OWN_FIELDS): an fcn.json written
before held every option, e.g. a CamVid MobileNetV2 model's "label" and "depth", which reading
drops, as it drops keys it does not know.
"""
import dataclasses
import os

from roadseg import files
from roadseg.errors import UserError

MODEL_INFO = 'fcn.json'  # the model's training size, classes and data set, beside the model
# The fields that apply only to some models: {field: (the field deciding, its value)}
OWN_FIELDS = {'alpha': ('encoder', 'mobilenetv2'), 'depth': ('encoder', 'tiramisu'),
              'label': ('dataset', 'kitti')}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What inference needs to use a model, and what trained it. `image_shape` is (height,
    width), `class_colors` an RGB triple per class; `label` is KITTI's ground truth (road or
    lane), `classes` a class file's path, `remap` the merged classes, `alpha` MobileNetV2's
    width, `depth` FC-DenseNet's; `epoch` and `val_iou` are those of the exported weights."""
    image_shape: tuple
    num_classes: int
    class_names: tuple
    class_colors: tuple
    encoder: str | None = None
    decoder: str | None = None
    alpha: float | None = None
    depth: int | None = None
    dataset: str | None = None
    label: str | None = None
    classes: str | None = None
    remap: str | None = None
    epoch: int | None = None
    val_iou: float | None = None

    def __post_init__(self):
        """Tuples for the lists, and None for the fields that do not apply to the model."""
        values = {'image_shape': tuple(self.image_shape), 'class_names': tuple(self.class_names),
                  'class_colors': tuple(tuple(color) for color in self.class_colors)}
        values.update((name, None) for name, (deciding, value) in OWN_FIELDS.items()
                      if getattr(self, deciding) != value)
        for name, value in values.items():
            object.__setattr__(self, name, value)  # frozen: set here only, as it is made

    @classmethod
    def of_classes(cls, image_shape, class_set, **fields):
        """The ModelInfo of a model of `image_shape` predicting the classes of `class_set` (a
        roadseg.data.classes.ClassSet), with the optional `fields`."""
        return cls(image_shape, class_set.num_classes, class_set.names, class_set.colors,
                   **fields)

    @property
    def kitti_label(self):
        """KITTI's ground truth that the outputs are named as (probability PNGs, a submission):
        the model's label, road by default."""
        return self.label or 'road'

    @classmethod
    def from_json(cls, value):
        """The ModelInfo of an fcn.json's JSON object (of the schema 'fcn', roadseg.schemas);
        keys it does not know or that do not apply to the model are dropped."""
        return cls(**{field.name: value[field.name] for field in dataclasses.fields(cls)
                      if field.name in value})

    def to_json(self):
        """The fcn.json's JSON object: every field that applies to the model and is set."""
        value = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        value.update(image_shape=list(self.image_shape), class_names=list(self.class_names),
                     class_colors=[list(color) for color in self.class_colors])
        return {name: field for name, field in value.items() if field is not None}

    @classmethod
    def read(cls, folder, model_path):
        """The fcn.json in `folder`, beside the model `model_path`, checked against its schema
        (roadseg.schemas): a UserError in one line naming the file when it is missing or of
        another shape."""
        path = os.path.join(folder, MODEL_INFO)
        if not os.path.lexists(path):
            raise UserError(f'--model {model_path}: no {MODEL_INFO} beside it; keep the '
                            f'{MODEL_INFO} that main.py or export.py wrote with the model')
        return cls.from_json(files.read_json(path, kind='fcn'))

    def write(self, folder):
        """Write the fcn.json into `folder`."""
        files.write_json(os.path.join(folder, MODEL_INFO), self.to_json())

