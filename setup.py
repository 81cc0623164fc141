"""Packaging for cfx_nb, in the shape of nbdev 2's template: everything is read from settings.ini."""
import shlex
from configparser import ConfigParser

import setuptools

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + 'lib_name user branch license status min_python audience language'.split()
for o in expected: assert o in cfg, f'missing expected setting: {o}'
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {'apache2': 'Apache-2.0', 'mit': 'MIT'}  # SPDX expressions (license classifiers are deprecated)
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
            '6 - Mature', '7 - Inactive']
py_versions = '3.10 3.11 3.12'.split()

requirements = shlex.split(cfg.get('requirements', ''))
explain_requirements = shlex.split(cfg.get('explain_requirements', ''))  # Grad-CAM figures (pytorch-grad-cam + opencv)
docs_requirements = shlex.split(cfg.get('docs_requirements', ''))
sweep_requirements = shlex.split(cfg.get('sweep_requirements', ''))  # cfx_sweep: jobs on SLURM (submitit) or local processes
dev_requirements = shlex.split(cfg.get('dev_requirements', '')) + explain_requirements  # the tests cover Grad-CAM
# settings.ini's `status` is the trove number itself (3 -> '3 - Alpha'); nbdev's template indexed this
# list with it, which is off by one ('4 - Beta' for 3)
status = next((s for s in statuses if s.split(' - ')[0] == cfg['status'].strip()), None)
assert status, f"settings.ini: status = {cfg['status']!r}, expected one of 1..7 ({', '.join(statuses)})"
min_python = cfg['min_python']
lic = licenses.get(cfg['license'].lower(), cfg['license'])

setuptools.setup(
    name=cfg['lib_name'],
    license=lic,
    classifiers=['Development Status :: ' + status,
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title()]
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'explain': explain_requirements, 'docs': docs_requirements,
                    'sweep': sweep_requirements},
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d'],
                  'console_scripts': ['cfx_sweep=cfx_nb.sweep:cfx_sweep']},
    **setup_cfg)
