"""FCN-8s road segmentation on KITTI Road, in TensorFlow 1.x graph style on TensorFlow 2.x.

Loads the VGG16 encoder, grafts the FCN-8s decoder onto it, trains with Adam on flipped KITTI
batches and writes the trained model and overlaid inference images to a new run folder:

    python main.py --data-dir ./data --epochs 40 --batch-size 8
    python main.py --config configs/camvid_road_mobilenetv2.json

The five functions of the classic project are here; the library behind them is roadseg/, and
`run` is roadseg/commands/train.py's command, which pip installs as `roadseg-train`.
"""
import sys

from roadseg import cli
from roadseg.training import options

if __name__ == '__main__':  # answer --help and a bad option at once, before TensorFlow loads
    status = cli.main_guard(options.options, sys.argv[1:]) or \
        cli.main_guard(cli.require, 'tensorflow')
    if status:
        sys.exit(status)

from roadseg.commands import train as command  # noqa: E402
from roadseg.model import decoders, vgg  # noqa: E402  (these load TensorFlow, seconds)
from roadseg.training import loop, loss  # noqa: E402


def load_vgg(sess, vgg_path):
    """Load the VGG16 SavedModel (tag `vgg16`) into `sess`.

    :return: (image_input, keep_prob, layer3_out, layer4_out, layer7_out) tensors
    """
    return vgg.load_vgg(sess, vgg_path)


def layers(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes, weight_decay=1e-3):
    """The FCN-8s decoder: 1x1 class scores of layers 7, 4 and 3, upsampled by transposed
    convolutions with the pool4 and pool3 skips added on the way, to the input's size.

    :return: the last layer, [batch, height, width, num_classes] logits
    """
    return decoders.fcn(vgg_layer3_out, vgg_layer4_out, vgg_layer7_out, num_classes,
                        weight_decay)


def optimize(nn_last_layer, correct_label, learning_rate, num_classes, class_weights=None,
             loss_scale=False):
    """Softmax cross-entropy over the non-void pixels plus weight decay, minimised with Adam
    (with dynamic loss scaling for float16 when `loss_scale`).

    :return: (logits [pixels, num_classes], train_op, cross_entropy_loss)
    """
    return loss.optimize(nn_last_layer, correct_label, learning_rate, num_classes,
                         class_weights, loss_scale)


def train_nn(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss, input_image,
             correct_label, keep_prob, learning_rate, keep_prob_value=0.5,
             learning_rate_value=1e-4, log=print, start_epoch=1, on_step=None,
             on_epoch_end=None):
    """Train epochs `start_epoch`..`epochs` with a progress bar, reporting each epoch's mean loss
    through `log`; `learning_rate_value` is a number or a function of the global step;
    `on_step(loss)` and `on_epoch_end(epoch, mean_loss)` hang validation and checkpoints on;
    a loss that is not finite stops training (a UserError).

    :return: the list of mean losses, one per epoch trained
    """
    return loop.train(sess, epochs, batch_size, get_batches_fn, train_op, cross_entropy_loss,
                      input_image, correct_label, keep_prob, learning_rate, keep_prob_value,
                      learning_rate_value, log, start_epoch, on_step, on_epoch_end)


def run(argv=None):
    """Everything `python main.py` does (roadseg.training.train.train on the options of
    `argv`): read and check the data, build the FCN on the devices of --distribute, train with
    validation and checkpoints (or resume), export the best model and write overlays; the run
    folder (None on a multi-worker worker that is not the chief)."""
    return command.main(argv)


if __name__ == '__main__':
    sys.exit(cli.main_guard(run))
