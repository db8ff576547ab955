"""The bookkeeping around training: TensorBoard summaries, validation every --val-every epochs,
the best model's export, checkpoints and metrics.json (RunMonitor)."""
import os
import time

from roadseg import bev, drawing, evaluation, files, images, inference
from roadseg.errors import UserError
from roadseg.model.ops import tf1
from roadseg.model_info import MODEL_INFO, ModelInfo
from roadseg.training import checkpoints


def validates(config, epoch):
    """Whether `epoch` ends with validation (RunConfig `config`): every --val-every epochs, and
    the last."""
    return epoch % config.run.val_every == 0 or epoch == config.training.epochs


class RunMonitor:
    """The bookkeeping around training: TensorBoard summaries every step, and after every epoch
    metrics.json and the checkpoint, with validation and the export of the best model so far
    after every --val-every epochs and the last.

    `model` is the inference tower as an inference.Model; `export(epoch, key_metric)` writes it
    to model/. `data` is the run's inputs.RunData: its validation samples, and with --val-bev
    their paths (validation scores in KITTI's bird's-eye view too); its in-group samples,
    images of the training groups that do not train, are scored at each validation beside it
    but never pick the model."""

    def __init__(self, run_dir, sess, saver, model, export, config, data, log, records, step):
        self.run_dir, self.sess, self.saver, self.config = run_dir, sess, saver, config
        self.classes, self.bev_paths = data.dataset.classes, data.bev_paths
        self.val_samples, self.in_group_samples = data.val_samples, data.in_group_samples
        self.model, self.export, self.log = model, export, log
        self.records, self.step_count = records, step
        self.writer = tf1.summary.FileWriter(run_dir)
        self.best = max((r for r in records if 'key_metric' in r),
                        key=lambda r: r['key_metric'], default=None) if self.val_samples else None
        self.clock = time.time()

    def scalars(self, values, step):
        self.writer.add_summary(tf1.Summary(value=[
            tf1.Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()
            if value is not None]), step)

    def validates(self, epoch):
        """Whether `epoch` ends with validation (run.validates)."""
        return validates(self.config, epoch)

    def step(self, loss):
        self.step_count += 1
        self.scalars({'train/loss': loss}, self.step_count)

    def overlays(self, epoch, count=3):
        """A few validation overlays, at the training size, as TensorBoard images."""
        import imageio.v3 as iio
        values = []
        for name, image, _ in self.val_samples[:count]:
            small = images.resize_image(image, self.config.training.image_shape)
            classes = inference.classes_of(self.model(small[None])[0])
            drawn = drawing.overlay(small, classes,
                                      drawing.overlay_colors(self.classes.colors))
            png = iio.imwrite('<bytes>', drawn, extension='.png')
            values.append(tf1.Summary.Value(tag=f'val/overlay/{name}', image=tf1.Summary.Image(
                height=small.shape[0], width=small.shape[1], colorspace=3,
                encoded_image_string=png)))
        self.writer.add_summary(tf1.Summary(value=values), epoch)

    def epoch_end(self, epoch, mean_loss):
        """Validate (every --val-every epochs), export a new best model, then commit the epoch:
        its checkpoint, whose manifest holds every record so far, then metrics.json."""
        now = time.time()
        record = {'epoch': epoch, 'train_loss': mean_loss, 'seconds': now - self.clock}
        self.clock = now
        validated = bool(self.val_samples) and self.validates(epoch)
        if validated:
            results = evaluation.evaluate(
                self.model, self.val_samples, bev_evaluation=bev.Evaluation(
                    self.bev_paths, self.config.data.label) if self.bev_paths else None)
            record.update(val=results, key_metric=evaluation.key_metric(results))
            self.log(f'epoch {epoch}: validation {evaluation.summary_line(results)}')
            kitti = results.get('kitti_road', {})
            self.scalars({'val/pixel_accuracy': results['pixel_accuracy'],
                          'val/mean_iou': results['mean_iou'],
                          'val/road_iou': results['iou'][1] if kitti else None,
                          'val/max_f': kitti.get('max_f'),
                          'val/average_precision': kitti.get('average_precision'),
                          'val/bev_max_f': (evaluation.bev_summary(results) or {})
                          .get('max_f')}, epoch)
            if self.in_group_samples:  # recorded as 'seen' (metrics.json's key since it began)
                record['seen'] = evaluation.evaluate(self.model, self.in_group_samples)
                self.log(f'epoch {epoch}: training groups\' unseen images '
                         f'{evaluation.summary_line(record["seen"])}')
                self.scalars({'seen/mean_iou': record['seen']['mean_iou'],
                              'seen/key_metric': evaluation.key_metric(record['seen'])}, epoch)
            if epoch % self.config.run.tb_images_every == 0 \
                    or epoch == self.config.training.epochs:
                self.overlays(epoch)
        if validated and (self.best is None or record['key_metric'] > self.best['key_metric']):
            self.best = record
            self.export(epoch, record['key_metric'])
            self.log(f'epoch {epoch}: new best validation IoU {record["key_metric"]:.4f}, '
                     f'model exported to {os.path.join(self.run_dir, "model")}')
        self.records.append(record)
        checkpoints.save(self.sess, self.saver, os.path.join(self.run_dir, 'checkpoints'),
                         epoch, {self.best['epoch']} if self.best else set(),
                         extra={'records': self.records})
        self.write_metrics()
        self.writer.flush()

    def write_metrics(self):
        files.write_json(os.path.join(self.run_dir, 'metrics.json'),
                         {'epochs': self.records, 'best_epoch': self.best and self.best['epoch']})

    def headline(self):
        """The best epoch's figures in one line: validation (the held-out groups under
        --val-groups) and, beside it, the training groups' unseen images when there are any."""
        best, held = self.best, self.config.data.val_groups
        line = (f'best epoch {best["epoch"]}: '
                + (f'held-out groups {held}' if held else 'validation')
                + f' {evaluation.summary_line(best["val"])}')
        if 'seen' in best:
            line += f'; training groups\' unseen images {evaluation.summary_line(best["seen"])}'
        return line

    def finish(self):
        """Make model/ hold the best validated epoch (without validation, the last), which it
        may not after a kill between an export and its epoch's checkpoint: re-exported from
        that epoch's checkpoint, checked against its manifest first."""
        self.write_metrics()
        if self.best:
            self.log(self.headline())
        model = os.path.join(self.run_dir, 'model')
        exported = ModelInfo.read(model, model).epoch \
            if os.path.isfile(os.path.join(model, MODEL_INFO)) else None
        if not self.best:
            if exported != self.config.training.epochs:
                self.export(self.config.training.epochs)
            return
        if exported == self.best['epoch']:
            return
        reason = checkpoints.restore(self.sess, self.saver,
                                     os.path.join(self.run_dir, 'checkpoints'),
                                     self.best['epoch'])
        if reason:
            raise UserError(f'{self.run_dir}: the best epoch\'s checkpoint is unusable ({reason})'
                            f' and model/ holds epoch {exported}; train a new run')
        self.export(self.best['epoch'], self.best['key_metric'])
