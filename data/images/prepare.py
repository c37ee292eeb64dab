"""Images as token sequences (minGPT's play_image, after Image GPT): each image is resized to size x size,
each pixel replaced by the nearest of k colours (a palette found by k-means over the pixels' RGB values),
and the pixels read in raster order, row by row. Training images of fewer than k distinct colours get those
colours as their palette, exactly (a note says so), and the vocabulary shrinks to match.

    python data/images/prepare.py                                # CIFAR-10 through datasets, 16x16, k=512
    python data/images/prepare.py --input=photos/ --size=16 --k=64 --out_dir=data/my_images
    python data/images/prepare.py --input=images.npy             # an (N, H, W, 3) uint8 array

Each image is one example of size*size + 1 tokens: a start token (the palette's size: k, unless the images
have fewer colours), then its pixels' palette indices; every pixel is a target (loss_from 0), so sampling
from the start token draws whole images. meta.json holds the palette. CIFAR-10's test split becomes
val.bin; a folder or an array holds out --val_fraction of its images (the last ones, in file-name order).
Running it again gives byte-identical files.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
from configurator import configure, fail, make_dir, oneline  # noqa: E402
from data.shakespeare_char.prepare import write_atomic, write_meta  # noqa: E402

EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp')


def resize(images, size):
    """(N, H, W, 3) uint8 -> (N, size, size, 3) uint8, by Pillow's box filter (area averaging)."""
    from PIL import Image
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BOX)) for im in images])


def load_images(path, size):
    """A folder of image files (sorted by name) or an .npy array -> (N, size, size, 3) uint8."""
    if os.path.isdir(path):
        from PIL import Image
        files = sorted(f for f in os.listdir(path) if f.lower().endswith(EXTENSIONS))
        if not files:
            fail(f"--input={path} holds no images ({', '.join(EXTENSIONS)} files); give a folder of images or an .npy")
        images = []
        for f in files:
            try:
                with Image.open(os.path.join(path, f)) as im:
                    images.append(np.asarray(im.convert('RGB').resize((size, size), Image.BOX)))
            except OSError as e:
                fail(f"cannot read {os.path.join(path, f)} as an image ({oneline(e)}); remove it or fix it")
        return np.stack(images)
    if path.endswith('.npy'):
        try:
            images = np.load(path)
        except (OSError, ValueError) as e:
            fail(f"cannot read --input={path} ({oneline(e)})")
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            fail(f"--input={path} holds a {images.dtype} array of shape {images.shape}; give (N, H, W, 3) uint8 RGB")
        return resize(images, size)
    fail(f"--input={path}: give a folder of images or an .npy array of shape (N, H, W, 3)")


def cifar10(size):
    """CIFAR-10's train and test images through datasets (downloaded once into its cache)."""
    try:
        from datasets import load_dataset
        splits = load_dataset('uoft-cs/cifar10')
    except Exception as e:  # offline, or the hub unreachable: datasets raises many types
        fail(f"cannot load CIFAR-10 through datasets ({oneline(e)}); pass images with --input=FOLDER or --input=X.npy")
    return [resize(np.stack([np.asarray(im.convert('RGB')) for im in splits[s]['img']]), size) for s in ('train', 'test')]


def distinct_colours(pixels):
    """The distinct colours of pixels (N, 3) uint8 -> (M, 3) float32, in the order of their 0xRRGGBB codes."""
    p = pixels.astype(np.int32)
    codes = np.unique(p[:, 0] << 16 | p[:, 1] << 8 | p[:, 2])
    return np.stack([codes >> 16, codes >> 8 & 255, codes & 255], 1).astype(np.float32)


def kmeans(pixels, k, iters=20, seed=1337):
    """k colours that the pixels (N, 3) float32 lie close to: Lloyd's k-means in torch, started by k-means++
    (each next centre drawn with probability proportional to its squared distance from the centres so far);
    an emptied cluster restarts at the pixels farthest from their centres. The pixels hold k colours or more
    (prepare() checks it, and keeps fewer colours as they are)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(pixels)
    centres = [x[torch.randint(len(x), (1,), generator=g)][0]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(k - 1):
        centres.append(x[torch.multinomial(d2, 1, generator=g)][0])
        d2 = torch.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    centres = torch.stack(centres)
    for _ in range(iters):
        dist = torch.cdist(x, centres)
        nearest = dist.argmin(1)
        counts = torch.bincount(nearest, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, nearest, x)
        empty = counts == 0
        centres = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
        if empty.any():  # reseed them at the worst-served pixels
            far = dist.gather(1, nearest[:, None])[:, 0].topk(int(empty.sum())).indices
            centres[empty] = x[far]
    return centres


def quantise(images, palette):
    """(N, S, S, 3) uint8 -> (N, S*S) palette indices (int64), in raster order, by the nearest colour."""
    x = torch.from_numpy(images.reshape(-1, 3).astype(np.float32))
    idx = torch.cat([torch.cdist(chunk, palette).argmin(1) for chunk in x.split(1 << 16)])
    return idx.view(len(images), -1)


def dequantise(ids, palette, size):
    """Palette indices (N, S*S) -> (N, S, S, 3) uint8; an index past the palette (the start token) is black."""
    colours = torch.cat([torch.as_tensor(palette, dtype=torch.float32), torch.zeros(1, 3)])
    ids = torch.as_tensor(ids).clamp(max=len(colours) - 1)
    return colours[ids].round().clamp(0, 255).to(torch.uint8).view(-1, size, size, 3).numpy()


def grid(rows, scale=4, pad=2):
    """Rows of images (lists of (S, S, 3) uint8 arrays) -> one PIL image, each image scaled up (no smoothing:
    the pixels stay visible) on a white background."""
    from PIL import Image
    s = rows[0][0].shape[0] * scale
    width = max(len(r) for r in rows)
    canvas = Image.new('RGB', (pad + width * (s + pad), pad + len(rows) * (s + pad)), 'white')
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            canvas.paste(Image.fromarray(im).resize((s, s), Image.NEAREST), (pad + j * (s + pad), pad + i * (s + pad)))
    return canvas


def prepare(train, val, k, out_dir, seed=1337, fit_pixels=200_000):
    """Palette by k-means over (a sample of) the training pixels, or their colours themselves when they have
    fewer than k; write train.bin, val.bin, meta.json. Returns the palette (the start token is its length)."""
    size = train.shape[1]
    pixels = train.reshape(-1, 3)
    colours = distinct_colours(pixels)
    if len(colours) < k:  # every training pixel keeps its colour; a val pixel of another gets the nearest
        print(f"note: the training images have {len(colours)} distinct colours, fewer than k={k}: the palette "
              f"is exactly those colours")
        palette = torch.from_numpy(colours)
    else:
        fit = pixels[np.random.default_rng(seed).permutation(len(pixels))[:fit_pixels]]
        if len(distinct_colours(fit)) < k:  # the sample missed rare colours, and k-means needs k of them
            fit = pixels
        palette = kmeans(fit.astype(np.float32), k, seed=seed)
    palette = palette[torch.argsort(palette.sum(1))]  # dark to light: a readable meta.json, the same every run
    start = len(palette)  # the token after the colours
    make_dir(out_dir)
    for split, images in (('train', train), ('val', val)):
        ids = quantise(images, palette)
        tokens = torch.cat([torch.full((len(ids), 1), start), ids], 1)  # the start token first
        write_atomic(os.path.join(out_dir, f'{split}.bin'), tokens.numpy().astype(np.uint16).tobytes())
    write_meta(out_dir, {'vocab_size': start + 1,
                         'image': {'size': size, 'palette': palette.round(decimals=2).tolist()},
                         'example_len': size * size + 1, 'loss_from': 0})
    return palette


if __name__ == '__main__':
    cfg = {'input': '',          # a folder of image files or an .npy (N, H, W, 3) array; '' is CIFAR-10
           'size': 16,           # images are resized to size x size (CIFAR-10 is 32 x 32)
           'k': 512,             # colours in the palette (Image GPT's 9 bits); fewer trains faster on a CPU
           'val_fraction': 0.1,  # with --input: the share of the images held out as val.bin
           'max_images': 0,      # keep only the first this many training images (0: all), for a quick run
           'seed': 1337,
           'out_dir': os.path.dirname(os.path.abspath(__file__))}
    configure(cfg)
    if not (type(cfg['size']) is int and cfg['size'] > 0 and type(cfg['k']) is int and 2 <= cfg['k'] < 65535):
        fail(f"size={cfg['size']!r}, k={cfg['k']!r}: give a positive size and 2 <= k < 65535")
    if cfg['input']:
        images = load_images(cfg['input'], cfg['size'])
        n_val = int(round(cfg['val_fraction'] * len(images)))
        if not 0 < n_val < len(images):
            fail(f"val_fraction={cfg['val_fraction']} of {len(images)} images leaves no val or no training image")
        train, val = images[:-n_val], images[-n_val:]
    else:
        train, val = cifar10(cfg['size'])
    if cfg['max_images']:
        train = train[:cfg['max_images']]
    palette = prepare(train, val, cfg['k'], cfg['out_dir'], cfg['seed'])
    error = np.abs(dequantise(quantise(val, palette), palette.tolist(), cfg['size']).astype(int) - val).mean()
    print(f"{len(train):,} training and {len(val):,} val images of {cfg['size']}x{cfg['size']}, {len(palette)} colours "
          f"(mean error {error:.1f} of 255 per channel), {cfg['size'] ** 2 + 1} tokens each, in {cfg['out_dir']}")
