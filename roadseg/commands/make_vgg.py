"""Write the VGG16 FCN encoder as a SavedModel with Udacity's tag and tensor names, for when
Udacity's vgg.zip cannot be had: random weights, or Keras's ImageNet file.

    python make_vgg.py data/vgg                    # random initialisation
    python make_vgg.py data/vgg --keras-h5 vgg16_weights_tf_dim_ordering_tf_kernels.h5
"""
import sys

from roadseg import cli


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('export_dir', help='folder to write the SavedModel to, e.g. data/vgg')
    parser.add_argument('--keras-h5', help="Keras's VGG16 ImageNet weights file (.h5)")
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from roadseg.model import vgg  # loads TensorFlow (seconds): only once the options are sound
    path = vgg.save_vgg_saved_model(args.export_dir, args.keras_h5, seed=args.seed)
    print(f'wrote the VGG16 encoder SavedModel to {path}')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
